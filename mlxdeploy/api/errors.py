"""The one error shape: every 4xx/5xx leaves the server as an OpenAI error body."""

from __future__ import annotations

from .protocol import ErrorBody, ErrorDetail


class APIError(Exception):
    status = 500
    type = "server_error"
    headers: dict[str, str] = {}

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

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


class MethodNotAllowed(APIError):
    status = 405
    type = "invalid_request_error"


class Unavailable(APIError):
    status = 503
    type = "server_error"


class GenerationFailed(APIError):
    status = 500
    type = "server_error"


class TooManyRequests(APIError):
    status = 429
    type = "rate_limit_error"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message, code="server_busy")
        self.headers = {"Retry-After": str(retry_after)}


class Unauthorized(APIError):
    status = 401
    type = "invalid_request_error"
    headers = {"WWW-Authenticate": "Bearer"}

    def __init__(self, message: str):
        super().__init__(message, code="invalid_api_key")


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
