"""API errors: each carries its own status, body and headers."""

from __future__ import annotations

from mlxdeploy.api.errors import APIError, InvalidRequest, TooManyRequests, Unauthorized


def test_headers_belong_to_each_error() -> None:
    first, second = InvalidRequest("a"), InvalidRequest("b")
    first.headers["X-Extra"] = "1"
    assert second.headers == {} and APIError("c").headers == {}
    assert TooManyRequests("busy", 3).headers == {"Retry-After": "3"}
    assert Unauthorized("no key").headers == {"WWW-Authenticate": "Bearer"}
    assert Unauthorized("again").headers is not Unauthorized("other").headers
