"""Keep secrets out of anything stored for display or written to a log.

Secret values are marked where they arise (channel settings, credentials inside URLs, fetched
access tokens, computed signatures) in a ``SecretSet`` that the attempt's transcript owns. The
set redacts each value in every form it travels in: raw, JSON-escaped (with and without
``ensure_ascii``, once or twice), Python ``repr``, HTML-escaped, URL-encoded (``quote`` and
``quote_plus``, either case of hex) and base64. All forms of all values are matched by one
compiled alternation, built once per set of values and cached. Text is redacted whole before it
is cut; a cut that leaves the start of a secret (6+ characters) at the end of an excerpt masks
that tail too.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote_plus, urlsplit, urlunsplit

import orjson

MASK = "••••"

# Shorter values are left alone: masking every "ab" would wreck the text and hide nothing.
MIN_SECRET_CHARS = 4
# A cut excerpt ending in this many characters of a secret (or more) has that tail masked.
MIN_CUT_PREFIX_CHARS = 6

SENSITIVE_HEADERS = {
    "authorization",
    "proxy-authorization",
    "cookie",
    "webhook-signature",
    "x-acs-dingtalk-access-token",
    "x-api-key",
}
# A URL query parameter whose name contains one of these words (any case) carries a credential.
_CREDENTIAL_NAME = re.compile(r"key|token|secret|sign|password|passwd|pwd|auth", re.IGNORECASE)

# Token endpoints answer with the token in the body; a stored transcript must not keep it.
_TOKEN_FIELDS = re.compile(
    r'("(?:access_token|accessToken|tenant_access_token|app_access_token|refresh_token)"\s*:\s*)"[^"]*"'
)
_PERCENT_HEX = re.compile(r"%[0-9A-F]{2}")
_UNICODE_ESCAPE = re.compile(r"\\u[0-9a-f]{4}")


def is_credential_name(name: str) -> bool:
    """Whether a query parameter (or header) named ``name`` carries a credential."""
    return _CREDENTIAL_NAME.search(name) is not None


def scrub_tokens(text: str) -> str:
    """Mask access-token fields in a JSON text."""
    return _TOKEN_FIELDS.sub(lambda m: f'{m.group(1)}"{MASK}"', text)


def _upper_hex(match: re.Match[str]) -> str:
    return "\\u" + match.group(0)[2:].upper()


@functools.lru_cache(maxsize=2048)
def secret_forms(value: str) -> tuple[str, ...]:
    """Every spelling of ``value`` that a request, an answer or an error message may carry."""
    forms = {value, html.escape(value), html.escape(value, quote=False), repr(value)[1:-1]}
    for escaped in (orjson.dumps(value).decode()[1:-1], json.dumps(value)[1:-1]):
        forms.add(escaped)
        forms.add(json.dumps(escaped)[1:-1])  # a JSON text quoted inside another
        forms.add(orjson.dumps(escaped).decode()[1:-1])
    forms |= {_UNICODE_ESCAPE.sub(_upper_hex, form) for form in forms}
    encoded = {quote(value, safe=""), quote(value), quote_plus(value), quote_plus(value, safe="/")}
    forms |= encoded | {_PERCENT_HEX.sub(lambda m: m.group(0).lower(), f) for f in encoded}
    raw = value.encode()
    for b64 in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        forms |= {b64, b64.rstrip("=")}
    return tuple(sorted((f for f in forms if len(f) >= MIN_SECRET_CHARS), key=len, reverse=True))


class _Redactor:
    """The compiled matcher for one set of secret values."""

    __slots__ = ("forms", "pattern")

    def __init__(self, values: tuple[str, ...]) -> None:
        forms = {form for value in values for form in secret_forms(value)}
        self.forms = tuple(sorted(forms, key=len, reverse=True))  # longest first: it wins
        self.pattern = re.compile("|".join(map(re.escape, self.forms))) if forms else None

    def redact(self, text: str) -> str:
        if self.pattern is None or not text:
            return text
        return self.pattern.sub(MASK, text)


_EMPTY = _Redactor(())


def _cut_tail(text: str, forms: Iterable[str]) -> str:
    """``text`` with a trailing start of any of ``forms`` (a secret cut short) masked."""
    for form in forms:
        if len(form) <= MIN_CUT_PREFIX_CHARS:
            continue
        window_start = max(0, len(text) - len(form) + 1)
        head = form[:MIN_CUT_PREFIX_CHARS]
        at = text.find(head, window_start)
        while at != -1:
            if form.startswith(text[at:]):
                return text[:at] + MASK
            at = text.find(head, at + 1)
    return text


@functools.lru_cache(maxsize=1024)
def _redactor(values: frozenset[str]) -> _Redactor:
    return _Redactor(tuple(values))


_PLAIN = re.compile(r"[A-Za-z0-9+/=,._~-]+")


def _one_off_forms(value: str) -> tuple[str, ...]:
    """The forms of a value made for one request (a signature): base64 and hex travel raw or
    URL-encoded (``quote`` keeps "/", ``quote_plus`` does not; hex either case); anything else
    gets every form. Plain ``str.replace`` here: urllib's quote costs ~10 us a call."""
    if not _PLAIN.fullmatch(value):
        return secret_forms(value)
    path = value.replace("+", "%2B").replace("=", "%3D").replace(",", "%2C")
    full = path.replace("/", "%2F")
    forms = {value, path, full, _lower_hex(path), _lower_hex(full)}
    return tuple(sorted(forms, key=len, reverse=True))


def _lower_hex(encoded: str) -> str:
    return (
        encoded.replace("%2B", "%2b")
        .replace("%3D", "%3d")
        .replace("%2C", "%2c")
        .replace("%2F", "%2f")
    )


class SecretSet:
    """The secret values of one attempt (or one channel), redacted wherever text is kept.

    Values that recur (settings, access tokens) are matched by one compiled alternation,
    cached per set of values. A value made for one request only (a signature, ``add_one_off``)
    is replaced form by form instead: compiling a pattern for it would cost more (~0.3 ms)
    than the few replacements it needs. Channels add what they compute or fetch during a send;
    the transcript, the exchange's diagnoses and the answer excerpts all redact through the
    same set.
    """

    __slots__ = ("_one_off", "_redactor", "_values")

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: frozenset[str] = frozenset(v for v in values if len(v) >= MIN_SECRET_CHARS)
        self._redactor: _Redactor | None = None
        self._one_off: tuple[str, ...] = ()  # forms, longest first

    def add(self, *values: str | None) -> None:
        """Mark values that recur across attempts (an access token)."""
        fresh = {v for v in values if v and len(v) >= MIN_SECRET_CHARS} - self._values
        if fresh:
            self._values |= fresh
            self._redactor = None

    def add_one_off(self, *values: str | None) -> None:
        """Mark values made for this request only (a signature)."""
        forms = {f for v in values if v and len(v) >= MIN_SECRET_CHARS for f in _one_off_forms(v)}
        if forms:
            self._one_off = tuple(sorted({*self._one_off, *forms}, key=len, reverse=True))

    def copy(self) -> SecretSet:
        twin = SecretSet()
        twin._values, twin._redactor, twin._one_off = self._values, self._redactor, self._one_off
        return twin

    def __bool__(self) -> bool:
        return bool(self._values or self._one_off)

    def _compiled(self) -> _Redactor:
        if self._redactor is None:
            self._redactor = _redactor(self._values) if self._values else _EMPTY
        return self._redactor

    def redact(self, text: str) -> str:
        """``text`` with every form of every secret masked."""
        if not text:
            return text
        if self._values:
            text = self._compiled().redact(text)
        for form in self._one_off:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def excerpt(self, text: str, limit: int, *, was_cut: bool = False) -> str:
        """The first ``limit`` characters of ``text``, redacted before the cut; a secret the
        cut (or an earlier one, ``was_cut``) leaves partly at the end is masked too."""
        text = self.redact(text)
        if len(text) > limit:
            text, was_cut = text[:limit], True
        if was_cut and self:
            text = _cut_tail(text, (*self._compiled().forms, *self._one_off))
        return text


def scrub(text: str, secrets: SecretSet | Iterable[str]) -> str:
    """Replace every form of each secret value with the mask."""
    return (secrets if isinstance(secrets, SecretSet) else SecretSet(secrets)).redact(text)


def url_credentials(url: str) -> list[str]:
    """The credentials a URL carries on its own: the password and ``user:password`` of its
    userinfo, and the values of query parameters whose names say they are credentials (as
    written and decoded)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    found: list[str] = []
    if password:
        found += [password, f"{parts.username or ''}:{password}"]
        found += [
            unquote_plus(password),
            f"{unquote_plus(parts.username or '')}:{unquote_plus(password)}",
        ]
    for piece in parts.query.split("&"):
        key, sep, value = piece.partition("=")
        if sep and value and is_credential_name(unquote_plus(key)):
            found += [value, unquote_plus(value)]
    return [v for v in dict.fromkeys(found) if len(v) >= MIN_SECRET_CHARS]


def has_url_credentials(url: str) -> bool:
    return bool(url_credentials(url))


@functools.lru_cache(maxsize=4096)  # a channel sends to the same few URLs over and over
def mask_url_credentials(url: str) -> str:
    """The URL with its password and credential query values replaced by the mask."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if parts.query:
        pieces = []
        for piece in parts.query.split("&"):
            key, sep, value = piece.partition("=")
            credential = sep and value and is_credential_name(unquote_plus(key))
            pieces.append(f"{key}={MASK}" if credential else piece)
        parts = parts._replace(query="&".join(pieces))
    if password is not None:
        userinfo, _, host = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}:{MASK}@{host}")
    return urlunsplit(parts)


def unmask_url(incoming: str, stored: str) -> str | None:
    """``incoming`` with each masked credential taken from ``stored`` (a form sent back a
    masked URL). None when a masked part has no stored counterpart, or when the URL now points
    elsewhere (scheme, host, port or path changed): a kept credential never follows the URL
    to another receiver."""
    if MASK not in incoming:
        return incoming
    try:
        new, old = urlsplit(incoming), urlsplit(stored)
        old_password = old.password
        same_place = (new.scheme, new.hostname, new.port, new.path, new.username) == (
            old.scheme,
            old.hostname,
            old.port,
            old.path,
            old.username,
        )
    except ValueError:
        return None
    if not same_place:
        return None
    netloc = new.netloc
    if f":{MASK}@" in netloc:
        if old_password is None:
            return None
        netloc = netloc.replace(f":{MASK}@", f":{old_password}@", 1)
    old_values: dict[str, list[str]] = {}  # as written, not decoded: put back byte for byte
    for piece in old.query.split("&") if old.query else []:
        key, _, value = piece.partition("=")
        old_values.setdefault(unquote_plus(key), []).append(value)
    pieces = []
    for piece in new.query.split("&") if new.query else []:
        key, sep, value = piece.partition("=")
        if value == MASK:
            candidates = old_values.get(unquote_plus(key))
            if not candidates:
                return None
            value = candidates.pop(0)
        pieces.append(f"{key}{sep}{value}")
    result = urlunsplit(new._replace(netloc=netloc, query="&".join(pieces)))
    return None if MASK in result else result


def redact_url(url: str, secrets: SecretSet | Iterable[str] = ()) -> str:
    """The URL with its credentials masked (userinfo password, credential query values) and
    every secret in ``secrets`` redacted."""
    return scrub(mask_url_credentials(url), secrets)


@functools.lru_cache(maxsize=256)
def _sensitive_header(name: str) -> bool:
    return name.lower() in SENSITIVE_HEADERS or is_credential_name(name)


def redact_headers(
    headers: dict[str, str], secrets: SecretSet | Iterable[str] = ()
) -> dict[str, str]:
    """Credential headers masked whole; secrets redacted in the others."""
    secret_set = secrets if isinstance(secrets, SecretSet) else SecretSet(secrets)
    kept = {name: value for name, value in headers.items() if not _sensitive_header(name)}
    if secret_set and kept:
        # one pass over all values (header values hold no line breaks); a match spanning two
        # of them changes the count, and then each is redacted on its own
        values = secret_set.redact("\n".join(kept.values())).split("\n")
        if len(values) != len(kept):
            values = [secret_set.redact(value) for value in kept.values()]
        kept = dict(zip(kept, values, strict=True))
    return {name: kept.get(name, MASK) for name in headers}
