"""Encryption of secret settings at rest (Fernet), and masking of secrets for display."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from cryptography.fernet import Fernet, InvalidToken

from msgpush.datadir import open_private, private_dir
from msgpush.redact import MASK, mask_url_credentials

__all__ = ["MASK", "SecretBox", "SecretKeyError", "is_masked", "load_or_create_key", "mask"]


class SecretKeyError(RuntimeError):
    """The configured key is unusable or cannot decrypt what is stored."""


def load_or_create_key(data_dir: Path, configured: str | None) -> bytes:
    """The Fernet key: ``MSGPUSH_SECRET_KEY`` if set, else ``<data_dir>/secret.key`` (0600)."""
    if configured:
        key = configured.strip().encode()
        try:
            Fernet(key)
        except ValueError as exc:
            raise SecretKeyError(
                "MSGPUSH_SECRET_KEY is not a Fernet key: generate one with "
                '`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`'
            ) from exc
        return key
    path = data_dir / "secret.key"
    if path.exists():
        return path.read_bytes().strip()
    private_dir(data_dir)
    key = Fernet.generate_key()
    fd = open_private(path, os.O_WRONLY | os.O_EXCL)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def seal(self, values: dict[str, Any]) -> str:
        if not values:
            return ""
        return self._fernet.encrypt(orjson.dumps(values)).decode()

    def open(self, token: str) -> dict[str, Any]:
        if not token:
            return {}
        try:
            result: dict[str, Any] = orjson.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as exc:
            raise SecretKeyError(
                "stored secrets cannot be decrypted with this key: "
                "MSGPUSH_SECRET_KEY (or secret.key) differs from the one they were saved with"
            ) from exc
        return result


def mask(value: Any) -> Any:
    """How a stored secret reads back: that it is set, never what it is.

    A URL keeps its host and path so an admin can tell which bot it is; its credential parts
    (key/token query values, token path segments) are masked.
    """
    if isinstance(value, dict):
        return {key: MASK for key in value}
    if isinstance(value, str):
        if value.startswith(("http://", "https://")):
            return mask_url(value)
        if len(value) >= 16:
            return MASK + value[-4:]
        return MASK
    return MASK


def mask_url(url: str) -> str:
    """A secret URL (a bot's webhook) as it reads back: credentials masked as in any URL
    (``msgpush.redact.mask_url_credentials``), and token-like path segments too."""
    parts = urlsplit(mask_url_credentials(url))
    segments = [
        MASK + segment[-4:] if len(segment) >= 16 and not segment.isalpha() else segment
        for segment in parts.path.split("/")
    ]
    return urlunsplit(parts._replace(path="/".join(segments)))


def is_masked(value: Any) -> bool:
    """A masked value sent back (e.g. by a form) means 'keep what is stored'."""
    if isinstance(value, str):
        return MASK in value
    if isinstance(value, dict):
        return bool(value) and all(item == MASK for item in value.values())
    return False
