"""The start-up warm-up: a few short generations through the path requests take, before the
engine reports ready.

What is cold in a fresh process: MLX compiles a fused kernel the first time a compiled function
(mlx-lm's SwiGLU, the fast CPU SwiGLU, samplers) meets new dtypes or memory layouts; on a CPU
each one is a C++ compile of a second or so (cached under $TMPDIR/mlx, so a new machine or
container pays it once per kernel). Prefill at batch 1 and at a padded batch of 2, and
decoding at batch 1 and 2, each meet their own. Besides those: the chat template's first
render and llguidance's tokenizer (built on the first constrained request, ~0.3-1 s).

Round 1 is one request with the model's default sampling; round 2 is two prompts of different
lengths together, one with the defaults and one with the other kind of sampler (greedy or
temperature) and a JSON constraint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..spec.settings import SamplingDefaults
from .api import Constraint, Event, SamplingParams, Turn

WARMUP_TOKENS = 4  # a prefill and a few decode steps
PROMPTS = ("Hi", "Say hello to everyone in a few words, please.")
ANY_OBJECT = Constraint('{"type": "object"}')


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


def other_params(params: SamplingParams) -> SamplingParams:
    """The other kind of sampler (greedy for a sampling default, and the reverse), with a
    JSON constraint: what the defaults leave cold."""
    temperature = 0.0 if params.temperature > 0 else 1.0
    return dataclasses.replace(params, temperature=temperature, constraint=ANY_OBJECT)


def conversations() -> tuple[list[Turn], list[Turn]]:
    return tuple([Turn("user", text)] for text in PROMPTS)  # type: ignore[return-value]


@dataclass
class Discard:
    """The sink of a warm-up request: its events are not wanted."""

    def put_nowait(self, event: Event) -> None:
        pass
