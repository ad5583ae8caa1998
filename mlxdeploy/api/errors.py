"""One error shape per API: every 4xx/5xx leaves the server as an OpenAI error body, or, on
Anthropic's Messages routes, as an Anthropic one, from one set of handlers."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

from ..spec.routes import MESSAGES_PREFIX
from .wire import ErrorBody, ErrorDetail

log = logging.getLogger("mlxdeploy.app")


class APIError(Exception):
    status = 500
    type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})  # Retry-After, WWW-Authenticate

    def body(self) -> ErrorBody:
        return ErrorBody(
            error=ErrorDetail(
                message=self.message, type=self.type, param=self.param, code=self.code
            )
        )


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class ModelNotFound(APIError):
    status = 404
    type = "invalid_request_error"

    def __init__(self, model: str):
        super().__init__(
            f"The model '{model}' does not exist or is not served here",
            param="model",
            code="model_not_found",
        )


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"


class Conflict(APIError):
    status = 409
    type = "invalid_request_error"


class MethodNotAllowed(APIError):
    status = 405
    type = "invalid_request_error"


class Unavailable(APIError):
    status = 503
    type = "server_error"

    def __init__(
        self, message: str, retry_after: int | None = None, code: str = "model_unavailable"
    ):
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        super().__init__(message, code=code, headers=headers)


class GenerationFailed(APIError):
    status = 500
    type = "server_error"


class TooManyRequests(APIError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message, code="server_busy", headers={"Retry-After": str(retry_after)})


class Unauthorized(APIError):
    status = 401
    type = "invalid_request_error"

    def __init__(self, message: str):
        super().__init__(message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


class Forbidden(APIError):
    status = 403
    type = "invalid_request_error"


class PayloadTooLarge(APIError):
    status = 413
    type = "invalid_request_error"

    def __init__(self, limit: int):
        super().__init__(
            f"the request body is larger than this server's limit of {limit} bytes",
            code="request_too_large",
        )


class RequestTimeout(APIError):
    status = 504
    type = "timeout"

    def __init__(self, seconds: float):
        super().__init__(
            f"the request did not finish within {seconds:g} seconds", code="request_timeout"
        )


def json_response(payload: BaseModel | dict[str, Any], status: int = 200) -> Response:
    data = payload.model_dump() if isinstance(payload, BaseModel) else payload
    return Response(json.dumps(data, ensure_ascii=False), status, mimetype="application/json")


# Anthropic's error types by status; it answers "overloaded" with 529, not 503.
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ANTHROPIC_STATUS = {503: 529}


def anthropic_error(exc: APIError) -> tuple[dict[str, Any], int]:
    """`exc` as Anthropic's error body, and the status Anthropic's API gives it."""
    status = ANTHROPIC_STATUS.get(exc.status, exc.status)
    kind = ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    error = {"type": kind, "message": exc.message}
    return {"type": "error", "error": error, "request_id": g.get("request_id")}, status


def error_response(exc: APIError) -> Response:
    """The error in the shape of the API the request spoke, with its own headers
    (Retry-After, WWW-Authenticate)."""
    if request.path.startswith(MESSAGES_PREFIX):
        body, status = anthropic_error(exc)
        response = json_response(body, status)
    else:
        response = json_response(exc.body(), exc.status)
    response.headers.update(exc.headers)
    return response


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(APIError)
    async def api_error(exc: APIError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return error_response(_from_werkzeug(exc))

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(APIError("internal server error"))


def _from_werkzeug(exc: HTTPException) -> APIError:
    status = exc.code or 500
    if status == 404:
        return NotFound(f"no route for {request.method} {request.path}")
    if status == 405:
        return MethodNotAllowed(f"method {request.method} is not allowed on {request.path}")
    if status == 413:
        return PayloadTooLarge(request.max_content_length or 0)
    mapped = InvalidRequest(exc.description or exc.name)
    mapped.status = status
    mapped.code = exc.name.lower().replace(" ", "_")
    return mapped
