"""X-Request-ID on every response of the app, and no cross-origin access by default.

That the access log names the request id is a process thing: see test_http_process.py.
"""

from __future__ import annotations

import re

import httpx
import pytest

from mlxdeploy.api.guards.request_ids import choose_request_id
from tests.inprocess import InProcessApp

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]
FRESH = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def http(tiny_app: InProcessApp) -> httpx.Client:
    return tiny_app.http


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", CHAT, {"messages": USER, "max_tokens": 1}, 200),
        ("GET", "/v1/models", None, 200),
        ("GET", "/health", None, 200),
        ("POST", CHAT, {"messages": []}, 400),
        ("GET", "/v1/nothing", None, 404),
        ("GET", CHAT, None, 405),
    ],
)
def test_every_response_has_a_request_id(
    http: httpx.Client, method: str, path: str, body: dict | None, status: int
) -> None:
    fresh = http.request(method, path, json=body)
    assert fresh.status_code == status
    assert FRESH.fullmatch(fresh.headers["x-request-id"])
    again = http.request(method, path, json=body)
    assert again.headers["x-request-id"] != fresh.headers["x-request-id"]
    mine = http.request(method, path, json=body, headers={"X-Request-ID": "client.id-42_A"})
    assert mine.headers["x-request-id"] == "client.id-42_A"


def test_streams_have_a_request_id(http: httpx.Client) -> None:
    body = {"messages": USER, "max_tokens": 2, "stream": True}
    with http.stream("POST", CHAT, json=body, headers={"X-Request-ID": "stream-1"}) as response:
        assert response.headers["x-request-id"] == "stream-1"
        assert list(response.iter_lines())[-2] == "data: [DONE]"


@pytest.mark.parametrize(
    "sent", ["x" * 129, "has space", "semi;colon", "new\\nline", "ünicode", "<script>", ""]
)
def test_unsafe_ids_are_replaced(http: httpx.Client, sent: str) -> None:
    response = http.get("/v1/models", headers={"X-Request-ID": sent.encode("utf-8")})
    assert FRESH.fullmatch(response.headers["x-request-id"])


def test_no_cross_origin_access_by_default(http: httpx.Client) -> None:
    preflight = http.options(
        CHAT,
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 403
    assert preflight.json()["error"]["type"] == "invalid_request_error"
    response = http.get("/v1/models", headers={"Origin": "https://app.example.com"})
    assert response.status_code == 200
    assert not any(name.startswith("access-control-") for name in response.headers)
    assert "vary" not in response.headers


def test_choose_request_id() -> None:
    assert choose_request_id("a" * 128) == "a" * 128
    assert choose_request_id("A-b_c.9") == "A-b_c.9"
    assert FRESH.fullmatch(choose_request_id("a" * 129))
    assert FRESH.fullmatch(choose_request_id(None))
    assert FRESH.fullmatch(choose_request_id("a\nb"))
