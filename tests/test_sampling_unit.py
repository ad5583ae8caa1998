"""SamplerCache without a model: equal settings share one sampler/processor object (so a batch
samples in one call), different settings do not, and the chosen objects do what they say."""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import pytest

from mlxdeploy.api.wire import SamplingFields
from mlxdeploy.engine.api import SamplingParams
from mlxdeploy.engine.sampling import (
    SamplerCache,
    SeededSampler,
    Vocabulary,
    check_vocabulary,
    greedy,
)
from mlxdeploy.spec.settings import LimitSettings, SamplingDefaults

BASE = SamplingParams(
    max_tokens=4, temperature=1.0, top_p=1.0, repetition_penalty=1.0,
    repetition_context_size=20, stop=(),
)  # fmt: skip


class FakeTokenizer:
    eos_token_ids = {2}

    def encode(self, text: str) -> list[int]:
        assert text == "\n"
        return [1, 10]


VOCAB = Vocabulary(size=16, tokenizer=FakeTokenizer())


def choose(cache: SamplerCache, **fields: object) -> tuple[object, object]:
    return cache.choose(replace(BASE, **fields), VOCAB)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"temperature": 0.0},
        {"top_k": 3},
        {"min_p": 0.1},
        {"top_p": 0.9, "top_k": 5, "min_p": 0.05},
        {"xtc_probability": 0.5, "xtc_threshold": 0.2},
        {"presence_penalty": 0.5, "frequency_penalty": -0.5},
        {"logit_bias": ((3, 5.0), (7, -1.0))},
        {"repetition_penalty": 1.2, "repetition_context_size": 8},
    ],
)
def test_equal_settings_share_one_object(fields: dict) -> None:
    cache = SamplerCache()
    first = choose(cache, **fields)
    second = choose(cache, **fields)
    assert first[0] is second[0] and first[1] is second[1]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"top_k": 3}, {"top_k": 4}),
        ({"min_p": 0.1}, {"min_p": 0.2}),
        ({"top_k": 3}, {}),
        ({"xtc_probability": 0.5}, {"xtc_probability": 0.6}),
        ({"xtc_probability": 0.5, "xtc_threshold": 0.1},
         {"xtc_probability": 0.5, "xtc_threshold": 0.2}),
    ],
)  # fmt: skip
def test_different_samplers(a: dict, b: dict) -> None:
    cache = SamplerCache()
    assert choose(cache, **a)[0] is not choose(cache, **b)[0]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"presence_penalty": 0.5}, {"presence_penalty": 0.6}),
        ({"presence_penalty": 0.5}, {"frequency_penalty": 0.5}),
        ({"frequency_penalty": 0.5}, {"frequency_penalty": 0.5, "frequency_context_size": 4}),
        ({"logit_bias": ((3, 5.0),)}, {"logit_bias": ((3, 6.0),)}),
        ({"logit_bias": ((3, 5.0),)}, {"logit_bias": ((4, 5.0),)}),
    ],
)
def test_different_processors(a: dict, b: dict) -> None:
    cache = SamplerCache()
    assert choose(cache, **a)[1] is not choose(cache, **b)[1]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # Settings that are off have one spelling.
        ({"xtc_probability": 0.0, "xtc_threshold": 0.3}, {}),
        ({"xtc_probability": 0.7, "xtc_threshold": 0.5}, {}),  # nothing is above half
        ({"top_k": 16}, {}),  # the whole vocabulary
        ({"top_p": 1.0, "min_p": 0.0, "top_k": 0}, {}),
        ({"temperature": 0.0, "top_k": 3, "min_p": 0.5}, {"temperature": 0.0}),
    ],
)
def test_off_settings_are_the_plain_sampler(a: dict, b: dict) -> None:
    cache = SamplerCache()
    assert choose(cache, **a)[0] is choose(cache, **b)[0]


def test_off_penalties_and_zero_biases_are_no_processors() -> None:
    cache = SamplerCache()
    assert choose(cache, presence_context_size=5, frequency_context_size=7)[1] == []
    assert choose(cache, logit_bias=((3, 0.0),))[1] == []
    assert (
        choose(cache, presence_penalty=0.5, presence_context_size=5)[1]
        is not choose(cache, presence_penalty=0.5)[1]
    )


def test_greedy_is_greedy_whatever_else_is_set() -> None:
    assert choose(SamplerCache(), temperature=0.0, top_k=2, xtc_probability=1.0)[0] is greedy


def test_filters_work_on_raw_logits() -> None:
    """The decode step hands raw logits; large ones must not overflow the nucleus filter."""
    logits = mx.array([[500.0, 499.0, 100.0, 0.0] + [-50.0] * 12])
    cache = SamplerCache()
    for fields in ({"top_k": 1}, {"min_p": 0.9}, {"top_p": 0.5}, {"top_p": 0.5, "top_k": 2}):
        sampler = choose(cache, **fields)[0]
        assert all(sampler(logits).item() == 0 for _ in range(20)), fields  # type: ignore[operator]


def test_xtc_removes_the_top_choices_and_spares_special_tokens() -> None:
    """Cool enough that the likeliest token left always wins."""
    sampler = choose(SamplerCache(), temperature=0.01, xtc_probability=1.0, xtc_threshold=0.3)[0]
    probs = [0.45, 0.35, 0.2] + [0.0] * 13  # 0 and 1 are above the threshold: 0 goes
    assert {sampler(log_probs(probs)).item() for _ in range(20)} == {1}  # type: ignore[operator]
    probs = [0.0] * 3 + [0.4] + [0.0] * 6 + [0.6] + [0.0] * 5  # 10 is a newline: it stays
    assert {sampler(log_probs(probs)).item() for _ in range(20)} == {10}  # type: ignore[operator]


def log_probs(probs: list[float]) -> mx.array:
    return mx.log(mx.array([probs]) + 1e-30)


def test_logit_bias_processor_adds_the_bias() -> None:
    processors = choose(SamplerCache(), logit_bias=((3, 100.0),))[1]
    logits = mx.zeros((1, 16))
    for processor in processors:  # type: ignore[attr-defined]
        logits = processor(mx.array([1, 2]), logits)
    assert logits[0, 3].item() == 100.0 and logits[0, 4].item() == 0.0


def test_a_bias_outside_the_vocabulary_is_refused() -> None:
    check_vocabulary(((15, 1.0),), 16)
    check_vocabulary(((10**6, 1.0),), None)
    with pytest.raises(ValueError, match="logit_bias: token 16 is not in the model's vocabulary"):
        choose(SamplerCache(), logit_bias=((3, 1.0), (16, 1.0)))


def test_the_old_call_forms_still_share_objects() -> None:
    cache = SamplerCache()
    assert cache.sampler(0.0, 1.0) is greedy
    assert cache.sampler(0.7, 0.9) is cache.sampler(0.7, 0.9, top_k=0)
    assert cache.processors(1.0, 20) == []
    assert cache.processors(1.3, 20) is cache.processors(1.3, 20, presence_penalty=0.0)


def params(body: dict, defaults: SamplingDefaults | None = None) -> SamplingParams:
    fields = SamplingFields.model_validate(body)
    return fields.to_sampling_params(defaults or SamplingDefaults(), (), LimitSettings())


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert params({"max_tokens": 5, "max_completion_tokens": 7}).max_tokens == 7
    assert params({"max_tokens": 5}).max_tokens == 5
    assert params({"max_completion_tokens": 7}).max_tokens == 7


def test_request_fields_win_over_defaults_and_defaults_fill_the_rest() -> None:
    defaults = SamplingDefaults(
        top_k=5, min_p=0.1, presence_penalty=0.5, frequency_penalty=0.25, logit_bias={9: 1.0},
        xtc_probability=0.3, xtc_threshold=0.2, presence_context_size=7, frequency_context_size=8,
    )  # fmt: skip
    got = params({}, defaults)
    assert (got.top_k, got.min_p) == (5, 0.1)
    assert (got.presence_penalty, got.frequency_penalty) == (0.5, 0.25)
    assert (got.xtc_probability, got.xtc_threshold) == (0.3, 0.2)
    assert (got.presence_context_size, got.frequency_context_size) == (7, 8)
    assert got.logit_bias == ((9, 1.0),)
    body = {
        "top_k": 0, "min_p": 0, "presence_penalty": 0, "frequency_penalty": -1,
        "logit_bias": {"12": -3, "4": 2.5}, "xtc_probability": 0, "xtc_threshold": 0.4,
        "presence_context_size": 1, "frequency_context_size": 2,
    }  # fmt: skip
    got = params(body, defaults)
    assert (got.top_k, got.min_p) == (0, 0)
    assert (got.presence_penalty, got.frequency_penalty) == (0, -1)
    assert (got.xtc_probability, got.xtc_threshold) == (0, 0.4)
    assert (got.presence_context_size, got.frequency_context_size) == (1, 2)
    assert got.logit_bias == ((4, 2.5), (12, -3.0))  # sorted: equal maps are equal keys
    assert params({"logit_bias": {}}, defaults).logit_bias == ()  # an empty map clears it


def test_the_vocabulary_size_comes_from_the_model_or_else_the_tokenizer() -> None:
    class Args:
        vocab_size = 32

    class Model:
        args = Args()

    class Wrapper:
        _tokenizer = list(range(7))

    assert Vocabulary.of(Model(), Wrapper()).size == 32
    assert Vocabulary.of(object(), Wrapper()).size == 7
    assert Vocabulary.of(object(), object()).size is None


def draws(sampler: object, logits: mx.array, count: int = 24) -> list[int]:
    return [sampler(logits).item() for _ in range(count)]  # type: ignore[operator]


FLAT = mx.zeros((1, 16))  # every token equally likely: only the draw decides


def test_a_seeded_request_gets_its_own_sampler_and_its_own_draws() -> None:
    cache = SamplerCache()
    first, second = choose(cache, seed=1)[0], choose(cache, seed=1)[0]
    assert isinstance(first, SeededSampler) and first is not second
    assert choose(cache)[0] is choose(cache)[0]  # unseeded requests still share
    expected = draws(first, FLAT)
    assert draws(second, FLAT) == expected  # the n-th call, the n-th key
    assert draws(choose(cache, seed=2)[0], FLAT) != expected
    for global_seed in (0, 1):  # the shared generator has no say in a seeded draw
        mx.random.seed(global_seed)
        assert draws(choose(cache, seed=1)[0], FLAT) == expected


def test_every_seed_in_openais_range_is_a_key_of_its_own() -> None:
    cache = SamplerCache()
    extremes = [-(1 << 63), -1, 0, (1 << 63) - 1]
    sequences = [tuple(draws(choose(cache, seed=s)[0], FLAT)) for s in extremes]
    assert len(set(sequences)) == len(extremes)


def test_greedy_ignores_the_seed() -> None:
    assert choose(SamplerCache(), temperature=0.0, seed=5)[0] is greedy


def test_seeded_filters_work_on_raw_logits() -> None:
    logits = mx.array([[500.0, 499.0, 100.0, 0.0] + [-50.0] * 12])
    cache = SamplerCache()
    for fields in ({"top_k": 1}, {"min_p": 0.9}, {"top_p": 0.5}, {"top_p": 0.5, "top_k": 2}):
        sampler = choose(cache, seed=3, **fields)[0]
        assert isinstance(sampler, SeededSampler)
        assert set(draws(sampler, logits)) == {0}, fields


def test_seeded_xtc_tosses_its_own_coin() -> None:
    """Cool enough that the likeliest token left always wins: 0 unless XTC excludes it."""
    probs = log_probs([0.45, 0.35, 0.2] + [0.0] * 13)
    fields = {"temperature": 0.01, "xtc_threshold": 0.3}
    always = choose(SamplerCache(), xtc_probability=1.0, seed=1, **fields)[0]
    assert set(draws(always, probs)) == {1}
    coin = [draws(choose(SamplerCache(), xtc_probability=0.5, seed=9, **fields)[0], probs)]
    coin.append(draws(choose(SamplerCache(), xtc_probability=0.5, seed=9, **fields)[0], probs))
    assert coin[0] == coin[1] and set(coin[0]) == {0, 1}


def test_the_seed_reaches_the_engine_and_bad_seeds_are_refused() -> None:
    assert params({}).seed is None
    assert params({"seed": -(1 << 63)}).seed == -(1 << 63)
    assert params({"seed": (1 << 63) - 1}).seed == (1 << 63) - 1
    for bad in ("1", 1.0, True, 1 << 63, -(1 << 63) - 1):
        with pytest.raises(ValueError):
            params({"seed": bad})
