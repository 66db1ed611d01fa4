"""Signatures shared by the channels: HMAC-SHA256 in the shapes vendors ask for."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

STANDARD_WEBHOOKS_PREFIX = "whsec_"


def hmac_sha256_b64(key: bytes, message: bytes) -> str:
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def standard_webhooks_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: the base64-decoded bytes after ``whsec_``."""
    body = secret.removeprefix(STANDARD_WEBHOOKS_PREFIX)
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(
            "signing_secret must be whsec_ followed by base64 (Standard Webhooks); generate one "
            "with: python -c \"import os,base64;print('whsec_'+base64.b64encode(os.urandom(32)).decode())\""
        ) from exc


def standard_webhooks_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + hmac_sha256_b64(key, signed)
