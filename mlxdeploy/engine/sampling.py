"""Samplers and logits processors, shared between requests with the same settings.

BatchGenerator samples the whole batch in one call when every request holds the same sampler
object, so equal settings must map to one object: settings are normalized (an option that is
off has one spelling) and cached. Samplers take raw logits (see batch.py): greedy, plain
temperature, top-k, min-p and XTC do not depend on normalization (each either ranks tokens,
compares logit differences or takes its own softmax); nucleus sampling exponentiates the values
it gets, so it normalizes first (`Filtered`, the filters without XTC, always does). Requests
that use none of these pay nothing for them.

A request with a `seed` is the exception: it gets a `SeededSampler` of its own, never shared,
whose draws come from its own key instead of the global generator, so what it generates does
not depend on what else shares the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    apply_xtc,
    make_logits_processors,
    make_sampler,
)

from .api import SamplingParams
from .mlx_lm_internals import wrapped_tokenizer

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]
XTC_THRESHOLD_OFF = 0.1  # mlx-lm's default; the value is unused while XTC is off
SEED_BITS = (1 << 64) - 1  # mx.random.key takes an unsigned 64-bit seed; OpenAI's is signed


def greedy(logits: mx.array) -> mx.array:
    return mx.argmax(logits, axis=-1)


@dataclass(frozen=True)
class Tempered:
    """Plain temperature sampling, nothing filtered: a draft's guesses for it are verified by
    rejection sampling (`speculative.py`), which needs the distribution it draws from."""

    temperature: float

    def __call__(self, logits: mx.array) -> mx.array:
        return mx.random.categorical(logits * (1.0 / self.temperature))

    def probabilities(self, logits: mx.array) -> mx.array:
        """The distribution a call draws from, per row of `logits` (rows, vocabulary)."""
        return mx.softmax(logits * (1.0 / self.temperature), axis=-1)


@dataclass(frozen=True)
class Filtered:
    """Temperature sampling after mlx-lm's filters, in its order (top-p, min-p, top-k; an
    option that is off is skipped), on normalized logits: the distribution it draws from is
    a function of the logits alone (`probabilities`), so a draft's guesses for it are verified
    by rejection sampling as `Tempered`'s are, with the filters applied to both models'."""

    temperature: float
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0

    def filter(self, logits: mx.array) -> mx.array:
        """Log-probabilities, -inf where a filter removes the token."""
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        if 0 < self.top_p < 1.0:
            logprobs = apply_top_p(logprobs, self.top_p)
        if self.min_p != 0:
            logprobs = apply_min_p(logprobs, self.min_p)
        if self.top_k > 0:
            logprobs = apply_top_k(logprobs, self.top_k)
        return logprobs

    def __call__(self, logits: mx.array) -> mx.array:
        return mx.random.categorical(self.filter(logits) * (1.0 / self.temperature))

    def probabilities(self, logits: mx.array) -> mx.array:
        """The distribution a call draws from, per row of `logits` (rows, vocabulary)."""
        return mx.softmax(self.filter(logits) * (1.0 / self.temperature), axis=-1)


@dataclass(frozen=True)
class SamplerKey:
    temperature: float
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    xtc_probability: float = 0.0
    xtc_threshold: float = XTC_THRESHOLD_OFF
    xtc_special_tokens: tuple[int, ...] = ()

    def normalized(self, vocab_size: int | None) -> SamplerKey:
        """One spelling per behaviour: greedy ignores every filter, and a filter that keeps
        every token is off."""
        if self.temperature == 0:
            return SamplerKey(0.0)
        top_k = self.top_k
        if vocab_size is not None and top_k >= vocab_size:
            top_k = 0  # keeps the whole vocabulary (mlx-lm would raise inside the step)
        xtc = self.xtc_probability > 0 and self.xtc_threshold < 0.5
        return SamplerKey(
            temperature=self.temperature,
            top_p=min(self.top_p, 1.0),
            top_k=top_k,
            min_p=self.min_p,
            xtc_probability=self.xtc_probability if xtc else 0.0,
            xtc_threshold=self.xtc_threshold if xtc else XTC_THRESHOLD_OFF,
            xtc_special_tokens=self.xtc_special_tokens if xtc else (),
        )


@dataclass(frozen=True)
class ProcessorKey:
    repetition_penalty: float = 1.0
    repetition_context_size: int = 20
    presence_penalty: float = 0.0
    presence_context_size: int = 20
    frequency_penalty: float = 0.0
    frequency_context_size: int = 20
    logit_bias: tuple[tuple[int, float], ...] = ()

    def normalized(self) -> ProcessorKey:
        """Context sizes of a penalty that is off do not tell settings apart."""
        return ProcessorKey(
            repetition_penalty=self.repetition_penalty,
            repetition_context_size=self.repetition_context_size
            if self.repetition_penalty != 1.0
            else 20,
            presence_penalty=self.presence_penalty,
            presence_context_size=self.presence_context_size if self.presence_penalty else 20,
            frequency_penalty=self.frequency_penalty,
            frequency_context_size=self.frequency_context_size if self.frequency_penalty else 20,
            logit_bias=tuple(sorted((t, b) for t, b in self.logit_bias if b != 0)),
        )


@dataclass(frozen=True)
class Vocabulary:
    """What some settings need to know of the model: its logits' width, and the tokens XTC
    must never exclude (newline and end of sequence, as mlx_lm.server passes them)."""

    size: int | None
    tokenizer: Any

    @classmethod
    def of(cls, model: Any, tokenizer: Any) -> Vocabulary:
        size = getattr(getattr(model, "args", None), "vocab_size", None)
        if not size:  # some configs nest it; the tokenizer's own count is the next best bound
            inner = wrapped_tokenizer(tokenizer)
            size = len(inner) if inner is not None and hasattr(inner, "__len__") else None
        return cls(int(size) if size else None, tokenizer)

    def special_tokens(self) -> tuple[int, ...]:
        tokens = [*self.tokenizer.encode("\n"), *self.tokenizer.eos_token_ids]
        return tuple(sorted(set(tokens)))


class SamplerCache:
    def __init__(self, size: int = 64):
        self._sampler = lru_cache(maxsize=size)(self._build_sampler)
        self._processors = lru_cache(maxsize=size)(self._build_processors)

    def sampler(self, temperature: float, top_p: float, **filters: Any) -> Sampler:
        """`filters`: SamplerKey's other fields."""
        return self._sampler(SamplerKey(temperature, top_p, **filters).normalized(None))

    def processors(
        self, repetition_penalty: float, repetition_context_size: int, **penalties: Any
    ) -> list[LogitsProcessor]:
        """`penalties`: ProcessorKey's other fields."""
        key = ProcessorKey(repetition_penalty, repetition_context_size, **penalties)
        return self._processors(key.normalized())

    def choose(self, p: SamplingParams, vocab: Vocabulary) -> tuple[Sampler, list[LogitsProcessor]]:
        """The sampler and processors of one request; ValueError for a logit_bias token the
        model does not have (indexing past the logits is never safe)."""
        check_vocabulary(p.logit_bias, vocab.size)
        xtc = p.temperature > 0 and p.xtc_probability > 0
        settings = SamplerKey(
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,
            min_p=p.min_p,
            xtc_probability=p.xtc_probability,
            xtc_threshold=p.xtc_threshold,
            xtc_special_tokens=vocab.special_tokens() if xtc else (),
        ).normalized(vocab.size)
        sampler: Sampler
        if p.seed is None or settings.temperature == 0:  # greedy draws nothing to seed
            sampler = self._sampler(settings)
        else:
            sampler = SeededSampler(settings, p.seed)
        processors = self.processors(
            p.repetition_penalty,
            p.repetition_context_size,
            presence_penalty=p.presence_penalty,
            presence_context_size=p.presence_context_size,
            frequency_penalty=p.frequency_penalty,
            frequency_context_size=p.frequency_context_size,
            logit_bias=p.logit_bias,
        )
        return sampler, processors

    @staticmethod
    def _build_sampler(key: SamplerKey) -> Sampler:
        if key.temperature == 0:
            return greedy
        if key == SamplerKey(key.temperature):
            return Tempered(key.temperature)
        if key.xtc_probability == 0:
            return Filtered(key.temperature, key.top_p, key.top_k, key.min_p)
        chain = make_sampler(
            temp=key.temperature,
            top_p=key.top_p,
            min_p=key.min_p,
            top_k=key.top_k,
            xtc_probability=key.xtc_probability,
            xtc_threshold=key.xtc_threshold,
            xtc_special_tokens=list(key.xtc_special_tokens),
        )
        if key.top_p >= 1.0:
            return chain
        return lambda logits: chain(logits - mx.logsumexp(logits, axis=-1, keepdims=True))

    @staticmethod
    def _build_processors(key: ProcessorKey) -> list[LogitsProcessor]:
        return make_logits_processors(
            logit_bias=dict(key.logit_bias) or None,
            repetition_penalty=None if key.repetition_penalty == 1.0 else key.repetition_penalty,
            repetition_context_size=key.repetition_context_size,
            presence_penalty=key.presence_penalty,
            presence_context_size=key.presence_context_size,
            frequency_penalty=key.frequency_penalty,
            frequency_context_size=key.frequency_context_size,
        )


class SeededSampler:
    """One request's sampler for its `seed`: the same filters as `SamplerCache`'s samplers,
    mlx-lm's own, in mlx-lm's order (top-p, min-p, XTC, top-k, then temperature), but every
    random draw comes from a key of its own, split once per call. It is called once per token
    of its own row, so the n-th token always draws from the n-th key of the seed."""

    def __init__(self, settings: SamplerKey, seed: int):
        assert settings.temperature > 0, "greedy sampling draws nothing to seed"
        self.settings = settings
        self._key = mx.random.key(seed & SEED_BITS)  # two's complement: one key per seed

    def __call__(self, logits: mx.array) -> mx.array:
        self._key, draw = mx.random.split(self._key)
        s = self.settings
        if 0 < s.top_p < 1.0:  # the nucleus filter exponentiates: raw logits must be normalized
            logits = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            logits = apply_top_p(logits, s.top_p)
        if s.min_p != 0:
            logits = apply_min_p(logits, s.min_p)
        if s.xtc_probability > 0:
            coin, draw = mx.random.split(draw)
            logits = self._xtc(logits, mx.random.uniform(shape=(), key=coin))
        if s.top_k > 0:
            logits = apply_top_k(logits, s.top_k)
        return mx.random.categorical(logits * (1.0 / s.temperature), key=draw)

    def _xtc(self, logits: mx.array, coin: mx.array) -> mx.array:
        # mlx-lm's apply_xtc tosses its coin on the global generator and takes no key: with
        # probability 1 it always excludes (its own coin never decides), and the coin that
        # decides is this request's own.
        s = self.settings
        excluded = apply_xtc(logits, 1.0, s.xtc_threshold, list(s.xtc_special_tokens))
        return mx.where(coin > s.xtc_probability, logits, excluded)


def check_vocabulary(logit_bias: tuple[tuple[int, float], ...], size: int | None) -> None:
    if size is None:
        return
    outside = [token for token, _ in logit_bias if token >= size]
    if outside:
        raise ValueError(
            f"logit_bias: token {outside[0]} is not in the model's vocabulary "
            f"(token ids are 0 to {size - 1})"
        )
