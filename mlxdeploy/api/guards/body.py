"""Request bodies: read whole on every route, and decoded to JSON with every way a body can be
malformed answered by a 400, never a 500."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from quart import Quart, Response, request

from ...spec.problems import dotted
from ..errors import InvalidRequest
from ..unused import validation_context

M = TypeVar("M", bound=BaseModel)


def install_body_reader(app: Quart) -> None:
    """Read each request's body before answering, also where the route ignores it.

    Hypercorn keeps a connection alive only when the request was read to its end; otherwise it
    closes it after a keep-alive response, and the client's next request on it fails."""

    @app.before_request
    async def read_whole_body() -> None:
        await request.get_data()  # bounded by MAX_CONTENT_LENGTH: larger bodies get 413

    @app.after_request
    async def close_after_unread_body(response: Response) -> Response:
        if response.status_code == 413:  # the rest of the body was never read
            response.headers["Connection"] = "close"
        return response


def decode_json(raw: bytes | str) -> Any:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    try:
        data = json.loads(raw)
    except RecursionError:  # the C decoder recurses once per nesting level
        raise InvalidRequest("the request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if _has_lone_surrogate(data):  # from a \ud800-\udfff escape: the tokenizer cannot take it
        raise InvalidRequest(
            "the request body has a string with an unpaired UTF-16 surrogate escape "
            "(\\ud800-\\udfff); text must be valid Unicode"
        )
    return data


def _has_lone_surrogate(data: Any) -> bool:
    """Walk without recursion: the value may be nested as deeply as the decoder allowed."""
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if not value.isascii() and _unencodable(value):
                return True
        elif isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


async def parse_body(model: type[M]) -> M:
    """The request's JSON body as `model`; one 400 naming every bad field otherwise. Its
    validators note the fields they accept but do not use in the request's record."""
    data = decode_json(await request.get_data())
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data, context=validation_context())
    except ValidationError as exc:
        message, param = _describe(exc)
        raise InvalidRequest(message, param=param) from None


def _describe(exc: ValidationError) -> tuple[str, str | None]:
    """One message naming every bad field; union branches are folded into one entry."""
    by_param: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        param = dotted(tuple(part for part in error["loc"] if not _is_union_tag(part))) or "body"
        by_param.setdefault(param, []).append(error["msg"])
    message = "; ".join(
        f"{param}: {' or '.join(dict.fromkeys(msgs))}" for param, msgs in by_param.items()
    )
    first = next(iter(by_param))
    return message, None if first == "body" else first


def _is_union_tag(part: str | int) -> bool:
    """pydantic names the branch of a union in `loc` (`str`, `list[str]`, `function-after[...]`);
    a request's field names never look like these."""
    if isinstance(part, int):
        return False
    return part in {"str", "int", "float", "bool", "list", "dict", "none"} or any(
        c in part for c in "[-"
    )
