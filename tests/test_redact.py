"""The redactor on its own: every form of a hostile secret is masked, before and across cuts;
URL credentials are recognised, masked, and kept only on the same address."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgpush.channels.base import VendorRequest, VendorResponse, http_status_outcome
from msgpush.delivery.http import Transcript
from msgpush.redact import (
    MASK,
    SecretSet,
    mask_url_credentials,
    redact_headers,
    unmask_url,
    url_credentials,
)

HOSTILE = st.sampled_from(list("\"\\'+/=%&?#:@<> \t\u00e9\u6f22\U0001f600\u2028\x7f"))
SECRETS = st.text(
    alphabet=st.one_of(HOSTILE, st.characters(exclude_categories=("Cs",), exclude_characters="•")),
    min_size=6,
    max_size=60,
)
FILLER = st.text(alphabet="xyz ,.:{}", max_size=300)


ENCODINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "orjson": lambda s: orjson.dumps(s).decode()[1:-1],
    "json ascii": lambda s: json.dumps(s)[1:-1],
    "json no-ascii": lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    "json twice": lambda s: json.dumps(json.dumps(s)[1:-1])[1:-1],
    "quote": lambda s: quote(s, safe=""),
    "quote lower hex": lambda s: re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(s)),
    "quote path": quote,
    "quote_plus": quote_plus,
    "base64": lambda s: base64.b64encode(s.encode()).decode(),
    "repr": lambda s: repr(s)[1:-1],
}


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(SECRETS, st.sampled_from(sorted(ENCODINGS)), FILLER, FILLER)
def test_every_form_is_masked(secret: str, encoding: str, before: str, after: str) -> None:
    form = ENCODINGS[encoding](secret)
    redacted = SecretSet([secret]).redact(before + form + after)
    assert form not in redacted


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(SECRETS, st.sampled_from(sorted(ENCODINGS)), FILLER, st.integers(0, 400))
def test_a_cut_never_leaves_the_start_of_a_secret(
    secret: str, encoding: str, before: str, limit: int
) -> None:
    form = ENCODINGS[encoding](secret)
    excerpt = SecretSet([secret]).excerpt(before + form + " tail", limit)
    assert form not in excerpt
    assert not any(excerpt.endswith(form[:k]) for k in range(6, len(form)))
    assert len(excerpt) <= limit + len(MASK)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(SECRETS, st.sampled_from(sorted(ENCODINGS)), FILLER, st.integers(6, 60))
def test_a_secret_cut_upstream_is_masked_at_the_end(
    secret: str, encoding: str, before: str, keep: int
) -> None:
    """An answer read up to the size limit may end in part of a secret: that tail is masked."""
    partial = ENCODINGS[encoding](secret)[:keep]
    excerpt = SecretSet([secret]).excerpt(before + partial, 10_000, was_cut=True)
    assert not excerpt.endswith(partial)


def test_long_secrets_are_masked_before_the_cut() -> None:
    secret = 's3cr"et+/=' * 300  # 3,000 characters
    text = "error: " + json.dumps({"corpsecret": secret})
    excerpt = SecretSet([secret]).excerpt(text, 200)
    assert "s3cr" not in excerpt and excerpt.startswith("error: ")


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(SECRETS)
def test_transcripts_hold_no_form_of_the_secret(drawn: str) -> None:
    secret = "S3c|" + drawn  # never a field name of the record itself ("method", "url")
    transcript = Transcript(secrets=SecretSet([secret]))
    body = orjson.dumps({"corpid": "ww1", "corpsecret": secret})
    url = "http://127.0.0.1:1/cgi-bin/gettoken?" + f"appsecret={quote_plus(secret)}&x=1"
    echo = ("x" * 190 + json.dumps({"errmsg": f"bad corpsecret {secret}"})).encode()
    response = VendorResponse(400, {}, echo)
    transcript.add(VendorRequest("POST", url, {"X-Echo": secret}, body), response, secret)
    response.secrets = transcript.secrets
    diagnosis = transcript.redacted(http_status_outcome(response)).diagnosis or ""
    record = transcript.request_json() or ""
    for encoding in ("raw", "orjson", "json ascii", "quote_plus", "quote"):
        form = ENCODINGS[encoding](secret)
        assert form not in record and form not in diagnosis
        assert form not in orjson.loads(record)[0]["response"]


def test_one_off_signatures_are_masked_raw_and_url_encoded() -> None:
    secrets = SecretSet(["channel-secret"])
    signature = "v1,ab+cd/ef=="
    secrets.add_one_off(signature)
    text = f"sig={quote_plus(signature)} again {signature} lower {quote_plus(signature).lower()}"
    assert secrets.redact(text) == f"sig={MASK} again {MASK} lower {MASK}"


def test_url_credentials_by_parameter_name() -> None:
    url = (
        "https://u:p%40ss@hooks.example.com/x?apikey=A1b2&X-Auth=B1b2&accessToken=C1c2"
        "&Signature=D1d2&page=2&pwd=E1e2"
    )
    assert set(url_credentials(url)) >= {"p%40ss", "p@ss", "u:p@ss", "A1b2", "B1b2", "C1c2"}
    assert "2" not in url_credentials(url)
    masked = mask_url_credentials(url)
    assert masked == (
        f"https://u:{MASK}@hooks.example.com/x?apikey={MASK}&X-Auth={MASK}&accessToken={MASK}"
        f"&Signature={MASK}&page=2&pwd={MASK}"
    )


def test_a_masked_url_keeps_its_credentials_only_at_the_same_address() -> None:
    stored = "https://u:p%40ss@hooks.example.com/x?api_key=k%2By&page=1"
    masked = mask_url_credentials(stored)
    assert unmask_url(masked, stored) == stored
    assert unmask_url(masked.replace("page=1", "page=2"), stored) == stored.replace(
        "page=1", "page=2"
    )
    assert unmask_url(masked.replace("hooks.example.com", "evil.example"), stored) is None
    assert unmask_url(masked.replace("/x?", "/y?"), stored) is None
    assert unmask_url(masked + f"&token={MASK}", stored) is None  # nothing stored to keep
    assert unmask_url("https://hooks.example.com/x?api_key=new", stored) == (
        "https://hooks.example.com/x?api_key=new"
    )


def test_credential_headers_are_masked_and_others_redacted() -> None:
    headers = {"X-Api-Key": "k", "X-Auth-Token": "t", "X-Env": "prod s3cret-v", "Accept": "*/*"}
    redacted = redact_headers(headers, SecretSet(["s3cret-v"]))
    assert redacted == {
        "X-Api-Key": MASK,
        "X-Auth-Token": MASK,
        "X-Env": f"prod {MASK}",
        "Accept": "*/*",
    }
