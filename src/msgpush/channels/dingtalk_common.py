"""What DingTalk's robot webhook and self-built app channels share: markdown, titles, byte fits."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from msgpush.channels.base import Outcome
from msgpush.channels.render import LEVEL_LABELS, cut_bytes, cut_chars, markdown_body, utf8_len
from msgpush.message import Message

# ours: the conversation-list title is a one-line preview (DingTalk states no limit)
LIST_TITLE_CHARS = 64
# characters of plain text that DingTalk markdown would read as markup (title, fields, link titles)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]])")
# emphasis and code marks, dropped from the first content line when it becomes the list title
_LINE_MARKUP = re.compile(r"[*`]")
# DingTalk markdown joins single lines unless they end in two spaces (its docs advise "  \n");
# blank lines already separate paragraphs
_SOFT_BREAK = re.compile(r"(?<![\n ])\n(?!\n)")


def escape_markdown(text: str) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.splitlines()))


def keep_line_breaks(text: str) -> str:
    """Markdown whose single line breaks DingTalk shows as breaks, not as spaces."""
    return _SOFT_BREAK.sub("  \n", text)


def list_title(message: Message) -> str:
    """The one line DingTalk shows in the conversation list and the notification."""
    lines = (
        _LINE_MARKUP.sub("", line).lstrip("#>- ").strip() for line in message.content.splitlines()
    )
    source = message.title or next((line for line in lines if line), "")
    return cut_chars(" ".join(source.split()) or LEVEL_LABELS[message.level], LIST_TITLE_CHARS)


def markdown_text(message: Message, content: str, *, with_links: bool) -> str:
    if content.count("```") % 2:  # close a fence left open (or cut open) before our own parts
        content += "\n```"
    base = message.model_copy(update={"content": content, "fields": {}, "links": []})
    parts = [markdown_body(base, escape=escape_markdown)]
    if message.fields:
        parts.append(
            "\n".join(
                f"- **{escape_markdown(k)}**: {escape_markdown(v)}"
                for k, v in message.fields.items()
            )
        )
    if with_links and message.links:
        parts.append(
            "\n".join(f"- [{escape_markdown(link.title)}]({link.url})" for link in message.links)
        )
    return "\n\n".join(part for part in parts if part)


def fit(encode: Callable[[str], bytes], text: str, budget: int) -> tuple[str, bytes]:
    """The longest cut of ``text`` whose encoded body fits ``budget`` bytes (else the shortest).

    A binary search over the cut, since escaping and line breaks make the body grow faster
    than the text.
    """
    body = encode(text)
    if len(body) <= budget:
        return text, body
    low, high = 0, utf8_len(text) - 1
    best = cut_bytes(text, 0)
    best_body = encode(best)
    while low <= high:
        middle = (low + high) // 2
        candidate = cut_bytes(text, middle)
        candidate_body = encode(candidate)
        if len(candidate_body) <= budget:
            best, best_body, low = candidate, candidate_body, middle + 1
        else:
            high = middle - 1
    return best, best_body


def gateway_block(data: Any, status: int) -> Outcome | None:
    """DingTalk's gateway blocks a calling IP for a few minutes after too many calls from it
    (more than 10,000 in 20 s, docs/vendors/dingtalk.md#rate-limits), answering
    ``{"wait": 5, "punish": "deny"}`` with no code."""
    if not isinstance(data, dict) or not data.get("punish"):
        return None
    wait = data.get("wait")
    minutes = float(wait) if isinstance(wait, int | float) else 5.0
    return Outcome.retry(
        f"DingTalk's gateway is blocking this server's IP for {minutes:g} minutes (too many "
        "calls from it); retrying after that",
        status_code=status,
        retry_after_s=minutes * 60,
    )
