"""The OpenAPI document tells the truth: schemathesis fuzzes every operation of a live server
and checks each answer against the document (status, content type, headers, schema).

The server is this module's own (the fuzzer creates rules, template overrides and tokens that
would change what other tests see). Nothing leaves the machine: every URL setting of a channel
the fuzzer makes is pointed at a local receiver before the request goes out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from msgpush.api.app import create_app
from msgpush.channels import registry
from msgpush.settings import Settings
from tests.fakes.receiver import Receiver
from tests.server import ServerProcess

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
URL_SETTINGS = ("url", "webhook_url", "api_base", "oapi_base")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """SQLite only: the document and the answers do not depend on the backend, and one run
    takes about a minute."""
    process = ServerProcess(
        tmp_path_factory.mktemp("msgpush-openapi"),
        extra_env={"MSGPUSH_EGRESS_ALLOW": "127.0.0.1"},
    )
    process.start()
    yield process
    process.stop()


# The document as this code builds it (a lazy schema from a fixture would load the server's
# own, but schemathesis' lazy loading does not run under pytest 9); the server's is compared
# with it below.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


def keep_local(body: Any, target: str) -> None:
    """Point every URL setting in a channel body at ``target`` (settings a type defaults to its
    vendor's address included), so that no Test Push or delivery leaves the machine."""
    if not isinstance(body, dict) or not isinstance(body.get("config"), dict):
        return
    config = body["config"]
    channel_type = registry.get(body["type"]) if isinstance(body.get("type"), str) else None
    names = set(channel_type.settings_model.model_fields) if channel_type else set(config)
    for name in URL_SETTINGS:
        if name in names:
            config[name] = target


@schema.parametrize()
@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_is_documented(case: Any, fuzzed: ServerProcess, receiver: Receiver) -> None:
    keep_local(case.body, receiver.url("/fuzz"))
    case.call_and_validate(
        base_url=fuzzed.url,
        headers={"Authorization": f"Bearer {fuzzed.admin_token}"},
        checks=CHECKS,
    )


def test_document_declares_security_and_errors(fuzzed: ServerProcess) -> None:
    document = httpx.get(f"{fuzzed.url}/openapi.json", timeout=10).json()
    assert document == create_app(Settings()).openapi()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (mpk_…): Authorization: Bearer <token>",
    }
    for path, operations in document["paths"].items():
        if not path.startswith("/api/v1/"):
            continue  # /readyz: asked by load balancers, without a token
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            assert operation.get("security"), f"{where} declares no security"
            responses = operation["responses"]
            assert {"401", "422"} <= set(responses), where
            error = responses["401"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorBody"}, where
            if method in ("post", "put", "patch") and "requestBody" not in operation:
                assert path.endswith("/retry"), f"{where} takes a body it does not describe"
    channels = document["paths"]["/api/v1/channels"]
    assert channels["post"]["security"] == [{"bearer": ["admin"]}]
    assert "403" in channels["post"]["responses"] and "409" in channels["post"]["responses"]
    assert "403" not in document["paths"]["/api/v1/messages"]["post"]["responses"]
    readyz = document["paths"]["/readyz"]["get"]["responses"]
    assert set(readyz) == {"200", "503"} and "Retry-After" in readyz["503"]["headers"]
    new_channel = document["components"]["schemas"]["NewChannel"]
    assert new_channel["discriminator"]["propertyName"] == "type"
    assert set(new_channel["discriminator"]["mapping"]) == set(registry.type_ids())
