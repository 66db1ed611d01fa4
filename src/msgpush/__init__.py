"""msgpush: self-hosted message push to WeCom, Feishu/Lark, DingTalk and webhooks.

The public API is the HTTP client, ``Client``; the server is started with ``msgpush serve``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from msgpush.client import Client, MsgpushError

__all__ = ["Client", "MsgpushError", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the server and its worker processes never need the client (and
    # httpx, ~4 MB and ~0.1 s of start-up in every process).
    if name in ("Client", "MsgpushError"):
        from msgpush import client

        return getattr(client, name)
    raise AttributeError(f"module 'msgpush' has no attribute {name!r}")
