"""Feishu / Lark interactive cards (JSON 2.0) built from a message, shared by the bot and app types.

A card is a header coloured by level, the content as card markdown, the fields in two columns,
mentions as ``<at>`` tags and the links as buttons. ``fit_card`` shrinks it, content first, until
the request that carries it fits the vendor's byte limit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from msgpush.channels.render import LEVEL_LABELS, TRUNCATION_MARKER, cut_bytes, utf8_len
from msgpush.message import Format, Level, Mentions, Message

# Header colours by level: names from Feishu's card header template palette (blue, wathet,
# turquoise, green, yellow, orange, red, carmine, violet, purple, indigo, grey).
LEVEL_TEMPLATES = {
    Level.info: "blue",
    Level.success: "green",
    Level.warning: "orange",
    Level.error: "red",
    Level.critical: "carmine",
}

# A text tag beside the title repeats the level for readers who cannot tell the colours apart.
LEVEL_TAG_COLOURS = {
    Level.success: "green",
    Level.warning: "orange",
    Level.error: "red",
    Level.critical: "carmine",
}

# Card markdown renders HTML entities; these are the characters that would otherwise start
# markup (emphasis, links, code, headings, tables, tags such as <at> and <font>).
_ESCAPES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    "*": "&#42;",
    "_": "&#95;",
    "~": "&#126;",
    "`": "&#96;",
    "[": "&#91;",
    "]": "&#93;",
    "(": "&#40;",
    ")": "&#41;",
    "#": "&#35;",
    "|": "&#124;",
    "\\": "&#92;",
}
_ESCAPE_TABLE = str.maketrans(_ESCAPES)
_LIST_START = re.compile(r"^([ \t]*)([-+])", re.MULTILINE)

# An id that can sit unquoted in <at id=...>: open_id (ou_…), union_id (on_…) or a user_id.
_AT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_OPEN_TAG_AT_END = re.compile(r"<[^<>]{0,80}$")
FIELDS_TRUNCATED = "…({n} more fields truncated by msgpush)"
LINKS_TRUNCATED = "…({n} more links truncated by msgpush)"
UNPINGABLE_MAX_BYTES = 1_000
# When a card must shrink, content keeps at least this share of the limit before fields and
# buttons give way, and fields this share before buttons do.
CONTENT_SHARE = 0.4
FIELDS_SHARE = 0.2
PLACEHOLDER_TITLE_BYTES = 300
PLACEHOLDER_NOTE = "The message was too large for this channel; msgpush cut it to its title."


def escape_markdown(text: str) -> str:
    """Plain text shown as itself inside card markdown."""
    escaped = text.translate(_ESCAPE_TABLE)
    return _LIST_START.sub(lambda m: f"{m.group(1)}&#{ord(m.group(2))};", escaped)


def at_id_ok(user_id: str) -> bool:
    return _AT_ID.fullmatch(user_id) is not None


def unpingable(mentions: Mentions) -> list[str]:
    """Whom a Feishu bot cannot @: mobiles and emails (no lookup), and malformed ids."""
    return [
        *(uid for uid in mentions.user_ids if not at_id_ok(uid)),
        *mentions.mobiles,
        *mentions.emails,
    ]


def mention_markdown(mentions: Mentions) -> str:
    """``<at>`` tags that ping, then the names that cannot be @'d as plain text."""
    tags = [f"<at id={uid}></at>" for uid in dict.fromkeys(mentions.user_ids) if at_id_ok(uid)]
    if mentions.all:
        tags.append("<at id=all></at>")
    names = " ".join(f"@{name}" for name in unpingable(mentions))
    plain = escape_markdown(cut_bytes(names, UNPINGABLE_MAX_BYTES, marker="…"))
    return "\n".join(part for part in (" ".join(tags), plain) if part)


@dataclass(frozen=True)
class CardBudget:
    """How much of each shrinkable part a card may show; None shows it whole."""

    content_bytes: int | None = None
    fields_bytes: int | None = None  # set: fields become markdown lines cut to this many bytes
    links: int | None = None


def cut_markdown(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes without leaving a tag or code fence open."""
    cut = cut_bytes(text, limit, marker="")
    if cut == text:
        return text
    cut = _OPEN_TAG_AT_END.sub("", cut)
    if cut.count("```") % 2:
        cut += "\n```"
    return cut + TRUNCATION_MARKER


def build_card(
    message: Message, *, keywords: Sequence[str] = (), budget: CardBudget = CardBudget()
) -> dict[str, Any]:
    """The card for ``message``; when no keyword appears in its text, the first one leads the
    title (bots with security keywords reject a card without one)."""
    elements: list[dict[str, Any]] = []
    content = card_content(message)
    if content:
        if budget.content_bytes is not None:
            content = cut_markdown(content, budget.content_bytes)
        elements.append(_markdown(content))
    elements.extend(_fields(message.fields, budget.fields_bytes))
    mentions = mention_markdown(message.mentions)
    if mentions:
        elements.append(_markdown(mentions))
    elements.extend(_buttons(message, budget.links))

    title = message.title.strip() or LEVEL_LABELS[message.level]
    if keywords and not any(k in text for text in _texts(elements, title) for k in keywords):
        title = f"[{keywords[0]}] {title}"
    header: dict[str, Any] = {
        "title": {"tag": "plain_text", "content": title},
        "template": LEVEL_TEMPLATES[message.level],
    }
    if message.level in LEVEL_TAG_COLOURS:
        header["text_tag_list"] = [
            {
                "tag": "text_tag",
                "text": {"tag": "plain_text", "content": message.level.value.upper()},
                "color": LEVEL_TAG_COLOURS[message.level],
            }
        ]
    return {"schema": "2.0", "header": header, "body": {"elements": elements}}


def fit_card(
    message: Message,
    *,
    limit: int,
    size_of: Callable[[dict[str, Any]], int],
    keywords: Sequence[str] = (),
) -> dict[str, Any]:
    """The richest card whose request (``size_of``, in bytes) fits ``limit``.

    Content is cut first, down to a share of the limit; then fields turn into markdown lines
    cut to a smaller share; then trailing buttons go; then content and fields are cut further.
    Each cut removes at least the overflow, since JSON never encodes a byte in fewer bytes.
    """
    full = {
        "content_bytes": utf8_len(card_content(message)),
        "fields_bytes": utf8_len(_field_lines(message.fields)) if message.fields else 0,
        "links": len(message.links),
    }
    stages = (
        ("content_bytes", min(full["content_bytes"], int(limit * CONTENT_SHARE))),
        ("fields_bytes", min(full["fields_bytes"], int(limit * FIELDS_SHARE))),
        ("links", 0),
        ("content_bytes", 0),
        ("fields_bytes", 0),
    )
    budget = CardBudget()
    for _ in range(64):
        card = build_card(message, keywords=keywords, budget=budget)
        over = size_of(card) - limit
        if over <= 0:
            return card
        for part, floor in stages:
            current = getattr(budget, part)
            current = full[part] if current is None else current
            if current > floor:
                step = 1 if part == "links" else over
                budget = replace(budget, **{part: max(floor, current - step)})
                break
        else:
            break
    return _placeholder(message, keywords)


def card_content(message: Message) -> str:
    """The content as card markdown (plain text escaped), or "" when there is none."""
    if not message.content.strip():
        return ""
    return message.content if message.format == "markdown" else escape_markdown(message.content)


def _markdown(content: str) -> dict[str, Any]:
    return {"tag": "markdown", "content": content}


def _field_lines(fields: dict[str, str]) -> str:
    return "\n".join(f"**{escape_markdown(k)}**: {escape_markdown(v)}" for k, v in fields.items())


def _fields(fields: dict[str, str], budget: int | None) -> list[dict[str, Any]]:
    if not fields:
        return []
    if budget is not None:
        lines = _field_lines(fields)
        cut = cut_bytes(lines, budget, marker="")
        if cut != lines:
            cut = cut.rsplit("\n", 1)[0] if "\n" in cut else ""
            shown = cut.count("\n") + 1 if cut else 0
            cut = "\n".join(p for p in (cut, FIELDS_TRUNCATED.format(n=len(fields) - shown)) if p)
        return [_markdown(cut)]
    items = list(fields.items())
    rows = []
    for start in range(0, len(items), 2):
        columns = [
            {
                "tag": "column",
                "width": "weighted",
                "weight": 1,
                "elements": [_markdown(f"**{escape_markdown(k)}**\n{escape_markdown(v)}")],
            }
            for k, v in items[start : start + 2]
        ]
        rows.append({"tag": "column_set", "flex_mode": "none", "columns": columns})
    return rows


def _buttons(message: Message, budget: int | None) -> list[dict[str, Any]]:
    links = message.links if budget is None else message.links[:budget]
    elements: list[dict[str, Any]] = []
    if links:
        columns = [
            {
                "tag": "column",
                "width": "auto",
                "elements": [
                    {
                        "tag": "button",
                        "text": {"tag": "plain_text", "content": link.title},
                        "type": "primary" if index == 0 else "default",
                        "behaviors": [{"type": "open_url", "default_url": str(link.url)}],
                    }
                ],
            }
            for index, link in enumerate(links)
        ]
        elements.append({"tag": "column_set", "flex_mode": "flow", "columns": columns})
    if len(links) < len(message.links):
        elements.append(_markdown(LINKS_TRUNCATED.format(n=len(message.links) - len(links))))
    return elements


def _texts(elements: list[dict[str, Any]], title: str) -> Iterator[str]:
    """The text-like values a keyword check reads (never URLs)."""
    yield title

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if node.get("tag") in ("markdown", "plain_text", "lark_md") and isinstance(
                node.get("content"), str
            ):
                yield node["content"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    yield from walk(elements)


def _placeholder(message: Message, keywords: Sequence[str]) -> dict[str, Any]:
    """Last resort for a message no budget fits: its title cut short and a note."""
    short = Message(
        title=cut_bytes(message.title, PLACEHOLDER_TITLE_BYTES, marker="…"),
        content=PLACEHOLDER_NOTE,
        format=Format.text,
        level=message.level,
    )
    return build_card(short, keywords=keywords)
