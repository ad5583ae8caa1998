"""Per-request bounds checked before generation: requested tokens (clamped or refused),
prompt length against the context. The wall-clock bound is the run's deadline (`run.py`)."""

from __future__ import annotations

from ...engine.api import Prompt, SamplingParams
from ...spec.settings import LimitSettings
from ..errors import InvalidRequest
from ..unused import UnusedFields
from ..wire import SamplingFields


def check_max_tokens(
    body: SamplingFields, limits: LimitSettings, unused: UnusedFields | None = None
) -> None:
    """A request may not ask for more tokens than the deployment allows: under
    `limits.max_tokens_exceeded: clamp` it runs with the limit (`to_sampling_params` clamps;
    the answer ends with `length` there, as at any max_tokens) and the field is noted; under
    `reject` it is a 400. `unused`: the request's record (None: nothing notes it)."""
    for param in ("max_tokens", "max_completion_tokens"):
        asked = getattr(body, param)
        if asked is None or asked <= limits.max_tokens:
            continue
        name = body.wire_name(param)
        if limits.max_tokens_exceeded == "clamp":
            if unused is not None:
                unused.note(name, f"clamped to {limits.max_tokens}")
            continue
        raise InvalidRequest(
            f"{name} is {asked}, above this deployment's limit of {limits.max_tokens}",
            param=name,
            code="integer_above_max_value",
        )


def check_n(body: SamplingFields, limits: LimitSettings) -> None:
    if body.n is not None and body.n > limits.max_n:
        raise InvalidRequest(
            f"n is {body.n}, above this deployment's limit of {limits.max_n} choices "
            "(limits.max_n)",
            param="n",
            code="integer_above_max_value",
        )


def check_context(prompt: Prompt, context_length: int | None, param: str = "messages") -> None:
    """The prompt must leave room for at least one generated token."""
    size = len(prompt.tokens)
    if context_length is not None and size >= context_length:
        raise InvalidRequest(
            f"this model's maximum context length is {context_length} tokens, "
            f"but the {param} are {size} tokens",
            param=param,
            code="context_length_exceeded",
        )


def check_logit_bias(params: SamplingParams, vocab_size: int | None) -> None:
    """A bias may only name a token the model has."""
    outside = [
        token for token, _ in params.logit_bias if vocab_size is not None and token >= vocab_size
    ]
    if outside:
        raise InvalidRequest(
            f"logit_bias: token {outside[0]} is not in the model's vocabulary "
            f"(token ids are below {vocab_size})",
            param="logit_bias",
        )
