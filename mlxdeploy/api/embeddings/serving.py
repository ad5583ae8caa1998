"""Serving embeddings: parse -> route (an embedding model) -> admission -> tokens -> checks ->
the engine's vectors -> OpenAI's `list` of `embedding` objects."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from quart import Response, g

from ...engine.api import EmbeddingFailed, Embeddings, Engine
from ...spec.settings import LimitSettings
from ..errors import GenerationFailed, InvalidRequest, RequestTimeout, json_response
from ..guards.body import parse_body
from ..routing import Targets
from ..run import Deadline
from .wire import EmbeddingList, EmbeddingObject, EmbeddingRequest, EmbeddingUsage, Input


async def create_embeddings(limits: LimitSettings, targets: Targets) -> Response:
    body = await parse_body(EmbeddingRequest)
    target = await targets.resolve(body.model, "embed")
    engine = target.engine
    check_dimensions(body.dimensions, engine.embedding_size)
    deadline = Deadline.start(limits.request_timeout_seconds)
    slot = target.admission.enter()
    try:
        inputs = await asyncio.to_thread(token_lists, engine, body.inputs())
        check_inputs(inputs, engine.context_length, engine.vocab_size)
        result = await _embed(engine, inputs, body.dimensions, deadline)
    finally:
        slot.release()
    return json_response(render(result, target.id, body.encoding_format))


def token_lists(engine: Engine, inputs: Sequence[Input]) -> list[list[int]]:
    """Each input's token ids: texts tokenized together, token ids as they came."""
    texts = [item for item in inputs if isinstance(item, str)]
    tokens = iter(engine.tokenize(texts) if texts else [])
    return [next(tokens) if isinstance(item, str) else item for item in inputs]


def check_dimensions(dimensions: int | None, size: int | None) -> None:
    if dimensions is not None and size is not None and dimensions > size:
        raise InvalidRequest(
            f"dimensions is {dimensions}, but this model's embeddings have {size}; "
            f"ask for {size} or fewer",
            param="dimensions",
            code="integer_above_max_value",
        )


def check_inputs(
    inputs: Sequence[Sequence[int]], context_length: int | None, vocab_size: int | None
) -> None:
    """Each input is read whole, so it must fit the model's context; token ids must exist."""
    for index, tokens in enumerate(inputs):
        where = f"input[{index}]" if len(inputs) > 1 else "input"
        if not tokens:
            raise InvalidRequest(f"{where} has no tokens; send text to embed", param=where)
        if context_length is not None and len(tokens) > context_length:
            raise InvalidRequest(
                f"this model's maximum context length is {context_length} tokens, "
                f"but {where} is {len(tokens)} tokens; shorten it or split it",
                param=where,
                code="context_length_exceeded",
            )
        outside = next((t for t in tokens if vocab_size is not None and t >= vocab_size), None)
        if outside is not None:
            raise InvalidRequest(
                f"{where}: token {outside} is not in the model's vocabulary "
                f"(token ids are below {vocab_size})",
                param=where,
            )


async def _embed(
    engine: Engine, inputs: list[list[int]], dimensions: int | None, deadline: Deadline
) -> Embeddings:
    try:
        async with asyncio.timeout_at(deadline.at):
            return await engine.embed(inputs, dimensions, g.get("request_id", ""))
    except TimeoutError:
        raise RequestTimeout(deadline.seconds) from None
    except EmbeddingFailed as exc:
        raise GenerationFailed(str(exc)) from None


def render(result: Embeddings, model: str, encoding: str | None) -> EmbeddingList:
    data = [EmbeddingObject.of(vector, i, encoding) for i, vector in enumerate(result.vectors)]
    usage = EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    return EmbeddingList(data=data, model=model, usage=usage)
