"""Samplers and logits processors, shared between requests with the same settings.

BatchGenerator samples the whole batch in one call when every request holds the same sampler
object, so equal settings must map to one object. Samplers take raw logits (see batch.py):
greedy and plain temperature sampling do not depend on normalization; nucleus sampling
normalizes first.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import mlx.core as mx
from mlx_lm.sample_utils import make_logits_processors, make_sampler

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


def greedy(logits: mx.array) -> mx.array:
    return mx.argmax(logits, axis=-1)


class SamplerCache:
    def __init__(self, size: int = 64):
        self.sampler = lru_cache(maxsize=size)(self._build_sampler)
        self.processors = lru_cache(maxsize=size)(self._build_processors)

    @staticmethod
    def _build_sampler(temperature: float, top_p: float) -> Sampler:
        if temperature == 0:
            return greedy
        if top_p >= 1.0:
            scale = 1.0 / temperature
            return lambda logits: mx.random.categorical(logits * scale)
        nucleus = make_sampler(temp=temperature, top_p=top_p)
        return lambda logits: nucleus(logits - mx.logsumexp(logits, axis=-1, keepdims=True))

    @staticmethod
    def _build_processors(penalty: float, context_size: int) -> list[LogitsProcessor]:
        if penalty == 1.0:
            return []
        return make_logits_processors(
            repetition_penalty=penalty, repetition_context_size=context_size
        )
