"""The HTTP API's front door (``api.py``): API tokens on the routes, and malformed requests, which must be
one-line 400s, never 500s.

Routes run in-process through FastAPI's TestClient, which re-raises any exception a handler lets escape, so
a 500 cannot hide. Token lines are written by hand (``tests/factories.token_line``: ``sha256`` of the token),
pinning the file format the README documents. ``serve``'s refusal to expose the API without tokens is in
``test_cli_serve.py``; the route contract in ``test_api.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.factories import api_token, settings_for, token_line
from tests.fixtures_api import HOOK, OLD_BODY, app_client, rejected
from timerctl import api
from timerctl.api import create_app

#: The documented nesting limit of a create's body (``timerctl.api.MAX_JSON_DEPTH``).
MAX_DEPTH = 128


# --- the routes with tokens ---------------------------------------------------------------------------------


class Tokens:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.read, self.write = api_token(), api_token()
        path.write_text(f"# test tokens\n{token_line(self.read, 'read')}\n{token_line(self.write, 'write')}\n")

    @staticmethod
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return Tokens(tmp_path / "tokens")


@pytest.fixture
def guarded(tmp_path: Path, tokens: Tokens) -> Iterator[TestClient]:
    with app_client(settings_for(tmp_path, api_tokens_file=str(tokens.path))) as client:
        yield client


ROUTES = [("POST", "/v1/timer"), ("GET", "/v1/timer/some-id"), ("DELETE", "/api/v1/timer/some-id")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_timer_route_without_a_token_is_401_with_www_authenticate(
    guarded: TestClient, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer"}):
        response = guarded.request(method, path, json=OLD_BODY if method == "POST" else None, headers=headers)
        rejected(response, 401, "missing API token; send the header Authorization: Bearer <token>")
        assert response.headers["www-authenticate"] == "Bearer"
    response = guarded.request(method, path, headers=Tokens.bearer(api_token()))
    rejected(response, 401, "unknown API token")
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_health_and_docs_stay_open(guarded: TestClient) -> None:
    assert guarded.get("/health").status_code == 200
    assert guarded.get("/docs").status_code == 200
    spec = guarded.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/timer"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/health"]["get"]


def test_a_read_token_reads_and_a_write_token_also_creates_and_cancels(guarded: TestClient, tokens: Tokens) -> None:
    read, write = Tokens.bearer(tokens.read), Tokens.bearer(tokens.write)
    response = guarded.post("/v1/timer", json={**OLD_BODY, "timerId": "t1"}, headers=read)
    rejected(response, 403, "this API token has scope read; POST needs scope write")
    assert response.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="write"'
    assert guarded.post("/v1/timer", json={**OLD_BODY, "timerId": "t1"}, headers=write).status_code == 201
    assert guarded.get("/v1/timer/t1", headers=read).json()["timer"]["timerStatus"] == "Scheduled"
    rejected(guarded.delete("/api/v1/timer/t1", headers=read), 403, "DELETE needs scope write")
    assert guarded.delete("/api/v1/timer/t1", headers=write).status_code == 200


def test_the_token_is_checked_before_the_body_is_read(guarded: TestClient) -> None:
    response = guarded.post("/v1/timer", content=b"[" * 100_000, headers={"content-type": "application/json"})
    rejected(response, 401, "missing API token")
    assert response.headers.get("connection") == "close", "an unread body is not drained on a kept-alive connection"


def test_revoking_a_token_takes_effect_on_the_next_request(guarded: TestClient, tokens: Tokens) -> None:
    write = Tokens.bearer(tokens.write)
    assert guarded.get("/v1/timer/x", headers=write).status_code == 404
    tokens.path.write_text(token_line(tokens.read, "read") + "\n")  # the write token's line removed
    rejected(guarded.get("/v1/timer/x", headers=write), 401, "unknown API token")
    assert guarded.get("/v1/timer/x", headers=Tokens.bearer(tokens.read)).status_code == 404


def test_without_a_tokens_file_the_routes_stay_open(tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tmp_path))) as client:
        assert client.post("/v1/timer", json=OLD_BODY).status_code == 201
        assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


# --- malformed requests are 400s with one line, never 500s ------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json"])
@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_json_nested_100000_deep_is_a_400(client: TestClient, content_type: str | None, opening: bytes) -> None:
    body = opening * 100_000 + (b"]" if opening == b"[" else b"}") * 100_000
    headers = {"content-type": content_type} if content_type else {}
    rejected(client.post("/v1/timer", content=body, headers=headers), 400, "nests arrays and objects too deeply")


def test_a_payload_nested_past_the_limit_is_a_400_and_at_the_limit_is_accepted(client: TestClient) -> None:
    def body(depth: int) -> bytes:  # the body object itself is the first level
        payload = b"[" * (depth - 1) + b"]" * (depth - 1)
        return b'{"seconds": 5, "webhookUrl": "' + HOOK.encode() + b'", "payload": ' + payload + b"}"

    assert getattr(api, "MAX_JSON_DEPTH", None) == MAX_DEPTH
    assert client.post("/v1/timer", content=body(MAX_DEPTH)).status_code == 201
    for depth in (MAX_DEPTH + 1, 990, 999):  # near Python's recursion limit: the old 500s
        rejected(client.post("/v1/timer", content=body(depth)), 400, f"at most {MAX_DEPTH} levels")


@pytest.mark.parametrize("content_type", [None, "application/json"])
def test_a_lone_surrogate_in_the_body_timer_id_is_a_400(client: TestClient, content_type: str | None) -> None:
    body = b'{"seconds": 5, "webhookUrl": "http://127.0.0.1:9/x", "timerId": "\\ud800"}'
    headers = {"content-type": content_type} if content_type else {}
    rejected(client.post("/v1/timer", content=body, headers=headers), 400, "invalid timer id")


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("path", ["/v1/timer/%ED%A0%80", "/api/v1/timer/%ED%A0%80x", "/v1/timer/%C0%80", "/v1/timer/"])
def test_undecodable_or_empty_ids_in_the_path_are_a_400(client: TestClient, method: str, path: str) -> None:
    rejected(client.request(method, path), 400, "invalid timer id")


def test_error_messages_never_repeat_a_url_secret(client: TestClient) -> None:
    for url in ("ftp://user:pw@example.com/x?token=s3cret", "http://example.com:99999/?token=s3cret"):
        response = client.post("/v1/timer", json={"seconds": 5, "webhookUrl": url})
        rejected(response, 400, "")
        assert "s3cret" not in response.text and "pw@" not in response.text, response.text


FIELDS = ["webhookUrl", "url", "hours", "minutes", "seconds", "in", "at", "expiryTime", "payload", "timerId", "id"]
NASTY_CHARS = ["\ud800", "\udcff", "\x00", "\n", "\u2028", "é", "%", ":"]
NASTY_WORDS = ["http://127.0.0.1:9/x", "http://u:p@h/?token=s", "1h", "ok-id", "2030-01-01T00:00:00Z", "9" * 5000]
text = st.text(st.characters() | st.sampled_from(NASTY_CHARS), max_size=30) | st.sampled_from(NASTY_WORDS)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | text
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3))
objects = st.dictionaries(st.sampled_from(FIELDS) | text, values, max_size=6)
bodies = st.one_of(
    objects.map(lambda o: json.dumps(o, ensure_ascii=True).encode()),  # surrogates as \ud800 escapes
    values.map(lambda v: json.dumps(v, ensure_ascii=True).encode()),
    st.binary(max_size=200),
    st.integers(1, 5000).map(lambda n: b'{"payload":' + b"[" * n + b"]" * n + b"}"),
)
CONTENT_TYPES = [None, "application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with app_client(settings_for(tmp_path_factory.mktemp("fuzz"))) as c:
        yield c


def assert_answered(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"code", "message"} and body["code"] == response.status_code
        assert "\n" not in body["message"] and body["message"]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(body=bodies, content_type=st.sampled_from(CONTENT_TYPES), prefix=st.sampled_from(["", "/api"]))
@example(body=b'{"webhookUrl": "http://127.0.0.1:9/x", "in": "1h", "timerId": "\\udcff"}', content_type=None, prefix="")
@example(
    body=b'{"webhookUrl": "http://127.0.0.1:9/x", "in": "1h", "payload": {"\\ud800": 1}}', content_type=None, prefix=""
)
def test_no_create_body_is_a_500(fuzz_client: TestClient, body: bytes, content_type: str | None, prefix: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    assert_answered(fuzz_client.post(f"{prefix}/v1/timer", content=body, headers=headers))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=60), method=st.sampled_from(["GET", "DELETE", "POST", "PUT"]))
@example(raw=b"\xed\xa0\x80", method="GET")
def test_no_path_is_a_500(fuzz_client: TestClient, raw: bytes, method: str) -> None:
    path = "/v1/timer/" + "".join(f"%{byte:02X}" for byte in raw)
    assert_answered(fuzz_client.request(method, path))
