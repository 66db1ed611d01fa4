"""Rendering primitives every vendor module shares: byte-safe cuts, level labels, keywords,
and one message laid out as markdown or plain text.

Vendors count size limits in UTF-8 bytes (one Chinese character is three), so cuts are made in
bytes, at a character boundary, with a visible marker.
"""

from __future__ import annotations

from collections.abc import Callable

from msgpush.message import Level, Message

TRUNCATION_MARKER = "\n…(truncated by msgpush)"

LEVEL_LABELS = {
    Level.info: "ℹ️ INFO",
    Level.success: "✅ SUCCESS",
    Level.warning: "⚠️ WARNING",
    Level.error: "❌ ERROR",
    Level.critical: "🔥 CRITICAL",
}


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def cut_bytes(text: str, limit: int, marker: str = TRUNCATION_MARKER) -> str:
    """``text`` if it fits in ``limit`` UTF-8 bytes, else its longest prefix that fits with the
    marker appended (never a broken character)."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    room = max(0, limit - utf8_len(marker))
    # decoding with "ignore" drops a trailing partial character instead of breaking it
    return encoded[:room].decode("utf-8", "ignore") + marker


def cut_chars(text: str, limit: int, marker: str = "…") -> str:
    """For limits vendors count in characters (titles, button labels)."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(marker))] + marker


def ensure_keyword(text: str, keywords: list[str]) -> str:
    """A bot with security keywords rejects a message that has none of them; add the first one
    visibly rather than have it rejected."""
    if not keywords or any(keyword in text for keyword in keywords):
        return text
    return f"[{keywords[0]}] {text}"


def identity(text: str) -> str:
    return text


def markdown_body(
    message: Message,
    *,
    escape: Callable[[str], str] = identity,
    heading: str = "### ",
    include_title: bool = True,
    include_links: bool = True,
) -> str:
    """Title, level, content, fields and links as markdown most chat vendors render.

    ``escape`` is applied to the caller's plain-text parts (title, field names and values, link
    titles); ``content`` is markdown already unless the message's format is ``text``.
    """
    parts: list[str] = []
    if include_title and message.title:
        parts.append(f"{heading}{escape(message.title)}")
    if message.level not in (Level.info,):
        parts.append(f"**{LEVEL_LABELS[message.level]}**")
    if message.content:
        content = message.content if message.format == "markdown" else escape(message.content)
        parts.append(content)
    if message.fields:
        parts.append("\n".join(f"**{escape(k)}**: {escape(v)}" for k, v in message.fields.items()))
    if include_links and message.links:
        parts.append("\n".join(f"[{escape(link.title)}]({link.url})" for link in message.links))
    return "\n\n".join(parts)


def text_body(message: Message, *, include_title: bool = True, include_links: bool = True) -> str:
    """The same facts as plain text, for channels or formats without markdown."""
    parts: list[str] = []
    head = message.title if include_title else ""
    if message.level is not Level.info:
        head = f"[{message.level.value.upper()}] {head}".strip()
    if head:
        parts.append(head)
    if message.content:
        parts.append(message.content)
    if message.fields:
        parts.append("\n".join(f"{k}: {v}" for k, v in message.fields.items()))
    if include_links and message.links:
        parts.append("\n".join(f"{link.title}: {link.url}" for link in message.links))
    return "\n\n".join(parts)
