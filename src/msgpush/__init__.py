"""msgpush: self-hosted message push to WeCom, Feishu/Lark, DingTalk and webhooks.

The public API is the HTTP client, ``Client``; the server is started with ``msgpush serve``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from msgpush.client import Client, MsgpushError

__all__ = ["Client", "MsgpushError", "__version__"]
