"""The start-up warm-up: a few short generations through the path requests take, before the
engine reports ready.

What is cold in a fresh process: MLX compiles a fused kernel the first time a compiled function
(mlx-lm's SwiGLU, the fast CPU SwiGLU, samplers) meets new dtypes or memory layouts; on a CPU
each one is a C++ compile of a second or so (cached under $TMPDIR/mlx, so a new machine or
container pays it once per kernel). A padded prefill of several prompts, and decoding at
batch 1 and at larger batches, each meet their own. Besides those: the chat template's first
render and llguidance's tokenizer (built on the first constrained request, ~0.3-1 s).

One round of three requests together, on prompts of two lengths: one with the model's default
sampling, one greedy with a JSON constraint, one with nucleus sampling (temperature and top_p).
On a model with adapters the constrained one applies an adapter, so that steps mix rows of the
model and of an adapter (`adapters.py`).
The last two stop after their first token, while a second round's request waits: it then takes
the slot of one of them (`storage.py`), its prompt read in a decode step where the family
allows it (`mixed.py`), so a decode step reads slots at different lengths (a scattered write, a
mask); when it ends too, the first request goes on alone, decoding at batch 1 (no mask). On
models batched by mlx-lm's batch caches (`batch.py`) the same rounds write a row into an ended
one's place and compact the batch around the first request. Other sampler filters (top_k,
min_p, XTC), and top_p for a request alone, compile their kernels on first use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..spec.settings import SamplingDefaults
from .api import Constraint, Event, Prompt, SamplingParams, Turn

WARMUP_TOKENS = 3  # the request that goes on alone: its first token and two decode steps
BATCH_TOKENS = 1  # a step at batch 3 dequantizes every quantized layer on a CPU (~0.4 s)
PROMPTS = ("Hi", "Say hello to everyone in a few words, please.")
ANY_OBJECT = Constraint('{"type": "object"}')
NUCLEUS_TOP_P = 0.9
Request = tuple[Prompt, SamplingParams]


def default_params(defaults: SamplingDefaults, stop: tuple[str, ...]) -> SamplingParams:
    """What a request that sets no field runs with, cut to a few tokens."""
    d = defaults
    return SamplingParams(
        max_tokens=WARMUP_TOKENS,
        temperature=d.temperature,
        top_p=d.top_p,
        repetition_penalty=d.repetition_penalty,
        repetition_context_size=d.repetition_context_size,
        stop=stop,
        top_k=d.top_k,
        min_p=d.min_p,
        presence_penalty=d.presence_penalty,
        presence_context_size=d.presence_context_size,
        frequency_penalty=d.frequency_penalty,
        frequency_context_size=d.frequency_context_size,
        logit_bias=tuple(sorted(d.logit_bias.items())),
        xtc_probability=d.xtc_probability,
        xtc_threshold=d.xtc_threshold,
    )


def rounds(
    short: Prompt,
    longer: Prompt,
    params: SamplingParams,
    wait_steps: int,
    adapter: str | None = None,
) -> list[list[Request]]:
    """The warm-up's rounds of requests (the module docstring): `params` are the defaults;
    `wait_steps`, how long the second round's prompt may wait to be read (the first request
    decodes until it has joined and ended); `adapter`, one of the model's adapters."""
    quick = dataclasses.replace(params, max_tokens=BATCH_TOKENS)
    constrained, nucleus = others(quick)
    constrained = dataclasses.replace(constrained, adapter=adapter)
    first = dataclasses.replace(params, max_tokens=params.max_tokens + wait_steps + BATCH_TOKENS)
    return [[(longer, first), (short, constrained), (short, nucleus)], [(short, quick)]]


def others(params: SamplingParams) -> tuple[SamplingParams, SamplingParams]:
    """Greedy with a JSON constraint, and nucleus sampling: what the defaults may leave cold."""
    constrained = dataclasses.replace(params, temperature=0.0, constraint=ANY_OBJECT)
    nucleus = dataclasses.replace(params, temperature=1.0, top_p=NUCLEUS_TOP_P)
    return constrained, nucleus


def conversations() -> tuple[list[Turn], list[Turn]]:
    return tuple([Turn("user", text)] for text in PROMPTS)  # type: ignore[return-value]


@dataclass
class Discard:
    """The sink of a warm-up request: its events are not wanted."""

    def put_nowait(self, event: Event) -> None:
        pass
