"""What WeCom's group bot and self-built app channels share: markdown and text rendering, errmsg
cleanup and errcode parsing."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from msgpush.channels.render import LEVEL_LABELS, TRUNCATION_MARKER, cut_bytes, utf8_len
from msgpush.message import Level, Message

# text.content <= 2048 bytes for app and bot messages (a bot server was seen enforcing 5120:
# the documented limit is the safe one; docs/vendors/wecom.md#size-limits).
TEXT_MAX_BYTES = 2048
# A per-minute block clears after one minute (docs/vendors/wecom.md#rate-limits).
WECOM_RATE_WINDOW_S = 60.0
# markdown (v1) knows three colours: info (green), comment (grey), warning (orange-red)
# (docs/vendors/wecom.md#group-bot).
LEVEL_COLORS = {
    Level.info: "comment",
    Level.success: "info",
    Level.warning: "warning",
    Level.error: "warning",
    Level.critical: "warning",
}
# Every errmsg may end in ", hint: [...], from ip: ..., more info at ..."
# (docs/vendors/wecom.md#answers).
ERRMSG_SUFFIX = re.compile(r"[\s,]*(?:hint: ?\[|from ip:|more info at ).*$", re.DOTALL)
ERROR_LOOKUP_URL = "https://open.work.weixin.qq.com/devtool/query?e={code}"

MarkdownVersion = Literal["markdown", "markdown_v2"]

# -- rendering ---------------------------------------------------------------------------------

# WeCom markdown documents no escape character, so the caller's plain text (title, fields, link
# titles) swaps markup characters for full-width lookalikes rather than relying on backslashes.
PLAIN_LOOKALIKES = str.maketrans({"*": "＊", "`": "｀", "[": "［", "]": "］"})
TAG_START = re.compile(r"<(?=[@/A-Za-z!])")
LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")
MD_LINK = re.compile(r"\[([^\]\n]*)\]\(([^)\s]*)\)")
MD_FONT = re.compile(r"</?font\b[^>]*>", re.IGNORECASE)
MD_HEADING = re.compile(r"^#{1,6}\s+", re.MULTILINE)
# <@userid> pings in text and markdown alike (docs/vendors/wecom.md#group-bot); only the caller's
# content and msgpush's own mention line may carry it, never a title or a field.
MENTION_TAG = "<@"


def escape_plain(text: str) -> str:
    """Caller text safe inside one line of WeCom markdown: no tags, no markup, no line breaks
    (which would end the heading or field line it sits in)."""
    text = LINE_BREAKS.sub(" ", text.strip())
    return TAG_START.sub("＜", text.translate(PLAIN_LOOKALIKES))


def plain_text(text: str) -> str:
    """Caller text for a text message: it may not ping anyone."""
    return text.replace(MENTION_TAG, "＜@")


def link_target(url: str) -> str:
    return url.replace(" ", "%20").replace("(", "%28").replace(")", "%29")


def markdown_as_text(content: str) -> str:
    """Markdown content read as plain text: links spelled out, markup removed (<@userid> is
    kept: it pings in text too)."""
    content = MD_LINK.sub(lambda m: f"{m[1]} ({m[2]})" if m[1] else m[2], content)
    content = MD_FONT.sub("", content)
    content = MD_HEADING.sub("", content)
    return content.replace("**", "")


def fit(
    head: list[str],
    content: str,
    tail: list[str],
    limit: int,
    suffix: str = "",
    *,
    sep: str = "\n\n",
    size: Callable[[str], int] = utf8_len,
    cut: Callable[[str, int], str] = cut_bytes,
) -> str:
    """head, content, tail and suffix joined by ``sep`` within ``limit`` (UTF-8 bytes, unless
    ``size`` and ``cut`` count otherwise): the content is cut first; should the rest alone be
    too big, all but the suffix (the mentions) is cut."""
    if suffix:
        limit -= size(sep + suffix)
    parts = [*head, content, *tail] if content else [*head, *tail]
    room = limit - size(sep.join([*head, "", *tail])) if content else 0
    if content and room > size(TRUNCATION_MARKER):
        body = sep.join([*head, cut(content, room), *tail])
    else:
        body = cut(sep.join(parts), limit)
    return sep.join([body, suffix]) if suffix else body


def markdown_content(
    message: Message, version: MarkdownVersion, mention_ids: list[str], limit: int
) -> str:
    """Title, coloured level, content, fields and links as WeCom markdown within ``limit``
    bytes (the bot allows 4096, an app 2048: docs/vendors/wecom.md#size-limits)."""
    head: list[str] = []
    if message.title:
        head.append(f"### {escape_plain(message.title)}")
    if message.level is not Level.info:
        label = f"**{LEVEL_LABELS[message.level]}**"
        if version == "markdown":
            label = f'<font color="{LEVEL_COLORS[message.level]}">{label}</font>'
        head.append(label)
    # v1 renders each quoted line on its own line and has no lists; v2 has lists
    field_bullet, link_bullet = ("> ", "") if version == "markdown" else ("- ", "- ")
    tail: list[str] = []
    if message.fields:
        tail.append(
            "\n".join(
                f"{field_bullet}**{escape_plain(k)}**: {escape_plain(v)}"
                for k, v in message.fields.items()
            )
        )
    if message.links:
        tail.append(
            "\n".join(
                f"{link_bullet}[{escape_plain(link.title)}]({link_target(str(link.url))})"
                for link in message.links
            )
        )
    return fit(head, message.content, tail, limit, mention_line(mention_ids))


def mention_line(user_ids: list[str]) -> str:
    return " ".join(f"<@{user_id}>" for user_id in user_ids)


def text_content(message: Message) -> str:
    """The whole message readably as plain text, within the text limit."""
    title = plain_text(LINE_BREAKS.sub(" ", message.title.strip()))
    if message.level is not Level.info:
        title = f"[{message.level.value.upper()}] {title}".strip()
    content = markdown_as_text(message.content) if message.format == "markdown" else message.content
    tail: list[str] = []
    if message.fields:
        tail.append(
            "\n".join(f"{plain_text(k)}: {plain_text(v)}" for k, v in message.fields.items())
        )
    if message.links:
        tail.append("\n".join(f"{plain_text(link.title)}: {link.url}" for link in message.links))
    return fit([title] if title else [], content, tail, TEXT_MAX_BYTES)


# -- the answer --------------------------------------------------------------------------------


def clean_errmsg(errmsg: str) -> str:
    """The errmsg without WeCom's trace suffix (hint, from ip, more info)."""
    return ERRMSG_SUFFIX.sub("", errmsg).strip() or errmsg.strip()


def errcode(body: Any) -> int | None:
    """The errcode of a WeCom answer (a number, or digits in a string), else None."""
    if not isinstance(body, dict):
        return None
    code = body.get("errcode")
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and re.fullmatch(r"-?\d+", code.strip()):
        return int(code)
    return None
