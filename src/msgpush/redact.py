"""Scrub secrets from anything that is stored for display or written to a log."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from msgpush.secretbox import MASK

SENSITIVE_QUERY_KEYS = {"key", "access_token", "token", "sign", "secret", "signature", "corpsecret"}
SENSITIVE_HEADERS = {
    "authorization",
    "proxy-authorization",
    "cookie",
    "webhook-signature",
    "x-acs-dingtalk-access-token",
    "x-api-key",
}


# Token endpoints answer with the token in the body; a stored transcript must not keep it.
_TOKEN_FIELDS = re.compile(
    r'("(?:access_token|accessToken|tenant_access_token|app_access_token|refresh_token)"\s*:\s*)"[^"]*"'
)


def scrub_tokens(text: str) -> str:
    """Mask access-token fields in a JSON text."""
    return _TOKEN_FIELDS.sub(lambda m: f'{m.group(1)}"{MASK}"', text)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret value with the mask."""
    for value in sorted(set(secrets), key=len, reverse=True):
        if value and len(value) >= 4:
            text = text.replace(value, MASK)
    return text


def redact_url(url: str, secrets: Iterable[str] = ()) -> str:
    """The URL with credential-bearing query values masked."""
    parts = urlsplit(url)
    if parts.query:
        pieces = []
        for piece in parts.query.split("&"):
            key, sep, _value = piece.partition("=")
            pieces.append(
                f"{key}={MASK}"
                if sep and unquote_plus(key).lower() in SENSITIVE_QUERY_KEYS
                else piece
            )
        parts = parts._replace(query="&".join(pieces))
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", f":{MASK}@"))
    return scrub(urlunsplit(parts), secrets)


def redact_headers(headers: dict[str, str], secrets: Iterable[str] = ()) -> dict[str, str]:
    secrets = list(secrets)
    return {
        name: MASK if name.lower() in SENSITIVE_HEADERS else scrub(value, secrets)
        for name, value in headers.items()
    }
