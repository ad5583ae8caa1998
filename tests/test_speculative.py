"""Speculative decoding in the batch (`engine/speculative.py`): greedy rows that read a draft
model's guesses yield the target's own greedy tokens, token for token, whatever the draft
guesses, with rows that do not speculate in the same steps."""

from __future__ import annotations

import importlib
import random
from typing import Any

import mlx.core as mx
import pytest
from mlx.utils import tree_map_with_path
from mlx_lm.generate import generate_step

from mlxdeploy.engine.draft_depth import PROBE, draft_cost
from mlxdeploy.engine.draft_prices import measure
from mlxdeploy.engine.generator import SlotGenerator
from mlxdeploy.engine.sampling import Filtered, Tempered, greedy
from mlxdeploy.engine.speculative import (
    DRAFT_BUDGET,
    Drafter,
    SpeculationError,
    accepted,
    depth,
    distributions,
    verify,
)
from tests.batched import batched as _batched
from tests.pricing import ByWeights

VOCAB = 512
CONFIG = {
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": VOCAB,
    "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "tie_word_embeddings": True,
    "rope_theta": 10000.0,
}  # fmt: skip
MAX_TOKENS = 24


def _model(seed: int, config: dict[str, Any] = CONFIG, noise: float = 0.0) -> Any:
    module = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(config))
    model.update(tree_map_with_path(_louder, model.parameters()))
    if noise:  # a copy of seed's model, slightly off: a draft that agrees often
        model.update(tree_map_with_path(lambda _, w: w + noise * mx.random.normal(w.shape),
                                        model.parameters()))  # fmt: skip
    mx.eval(model.parameters())
    return model


def _louder(path: str, weight: mx.array) -> mx.array:
    return weight if "norm" in path or weight.ndim < 2 else weight * 3


def _single(model: Any, prompt: list[int], n: int) -> list[int]:
    steps = generate_step(mx.array(prompt), model, max_tokens=n, sampler=greedy)
    return [int(token) for (token, _), _ in zip(steps, range(n), strict=False)]


def _prompts(seed: int, n: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, VOCAB) for _ in range(rng.randrange(5, 30))] for _ in range(n)]


@pytest.fixture(scope="module")
def target() -> Any:
    return _model(3)


@pytest.mark.parametrize("draft", ["itself", "perturbed", "unrelated"])
def test_greedy_tokens_match_the_target_single_stream(target: Any, draft: str) -> None:
    """Whatever the draft guesses (all, some, none right), the tokens are the target's."""
    model = {"itself": target, "perturbed": _model(3, noise=0.02), "unrelated": _model(4)}[draft]
    drafter = Drafter(model, num_draft_tokens=4, chunk=16)
    generator = SlotGenerator(target, completion_batch_size=8, prefill_batch_size=2,
                              prefill_step_size=16, drafter=drafter)  # fmt: skip
    prompts = _prompts(7, 6)
    lengths = [MAX_TOKENS - (i % 3) * 5 for i in range(len(prompts))]
    expected = [_single(target, p, n) for p, n in zip(prompts, lengths, strict=True)]
    assert len({t for tokens in expected for t in tokens}) > len(prompts), "tokens too uniform"
    assert _batched(generator, prompts, lengths) == expected
    stats = drafter.stats
    assert stats.drafted > 0
    if draft == "itself":
        assert stats.rate == 1.0
    if draft == "perturbed":
        assert 0.0 < stats.rate < 1.0, stats.rate


@pytest.mark.parametrize("draft", ["itself", "unrelated"])
def test_adaptive_depth_guesses_where_guesses_stand(target: Any, draft: str) -> None:
    """With a draft pass costing a tenth of the model's (`ByWeights`), rows guess as
    deep as they may while their guesses stand (the model drafting for itself), and stop
    guessing but for a probe now and then when none stand (an unrelated model); the tokens
    are the target's either way."""
    model = {"itself": target, "unrelated": _model(4)}[draft]
    prompts = _prompts(9, 4)
    lengths = [3 * PROBE] * len(prompts)
    expected = [_single(target, p, n) for p, n in zip(prompts, lengths, strict=True)]
    drafted = {}
    for cost in (None, 0.1):
        pricing = None if cost is None else ByWeights(cost)
        drafter = Drafter(model, num_draft_tokens=4, chunk=16, pricing=pricing)
        generator = SlotGenerator(target, completion_batch_size=8, prefill_batch_size=4,
                                  prefill_step_size=16, drafter=drafter)  # fmt: skip
        assert _batched(generator, prompts, lengths) == expected
        drafted[cost] = drafter.stats.drafted
    assert drafter.rule is not None
    learned = drafter.rule.pricing
    assert learned.plain  # plain steps were timed: the drafting ones are priced against them
    if draft == "itself":
        assert drafted[0.1] >= 0.9 * drafted[None]
        assert learned.extra != 0.0  # and its drafting steps were timed
    else:
        assert 0 < drafted[0.1] < drafted[None] / 4


def test_a_draft_as_large_as_its_model_guesses_only_to_probe(target: Any) -> None:
    """The spec's draft costs what the model costs: no depth pays, even when every guess
    stands."""
    drafter = Drafter(target, num_draft_tokens=4, chunk=16, pricing=ByWeights(draft_cost(10, 10)))
    generator = SlotGenerator(target, completion_batch_size=8, prefill_step_size=16,
                              drafter=drafter)  # fmt: skip
    prompts = _prompts(10, 1)
    assert _batched(generator, prompts, [2 * PROBE]) == [_single(target, prompts[0], 2 * PROBE)]
    assert drafter.stats.drafted <= 2 and drafter.stats.rate == 1.0


def test_prices_are_timed_on_both_models_for_every_depth_a_batch_may_guess(target: Any) -> None:
    """Each timed batch gets a verification price for every depth its budget allows, from 1
    (a plain pass) up, never falling as it reads more; a draft pass costs at least the floor
    its weights set; and a measured draft as costly as its model guesses only to probe."""
    prices = measure(target, _model(4), most=8, floor=0.5)
    assert prices.rows == (1, 4, 16)
    assert [len(v) for v in prices.verify] == [9, 9, 1 + DRAFT_BUDGET // 16]
    for prices_k in prices.verify:
        assert prices_k[0] == 1.0 and list(prices_k) == sorted(prices_k)
    assert all(d >= 0.5 for d in prices.draft)
    same = measure(target, target, most=4, floor=draft_cost(10, 10))
    drafter = Drafter(target, num_draft_tokens=4, chunk=16, pricing=same)
    generator = SlotGenerator(target, completion_batch_size=8, prefill_step_size=16,
                              drafter=drafter)  # fmt: skip
    prompts = _prompts(11, 1)
    assert _batched(generator, prompts, [2 * PROBE]) == [_single(target, prompts[0], 2 * PROBE)]
    assert drafter.stats.drafted <= 2


def test_rows_that_do_not_speculate_share_the_steps(target: Any) -> None:
    """Rows with logprobs asked or drafting turned off decode plainly beside guessing rows."""
    drafter = Drafter(target, num_draft_tokens=3, chunk=16)
    generator = SlotGenerator(target, completion_batch_size=8, prefill_batch_size=2,
                              prefill_step_size=16, drafter=drafter)  # fmt: skip
    prompts = _prompts(8, 6)
    lengths = [MAX_TOKENS] * len(prompts)
    expected = [_single(target, p, n) for p, n in zip(prompts, lengths, strict=True)]
    drafts = [None, 0, 2, None, 0, 1]
    logprobs = [None, None, None, 2, None, None]
    assert _batched(generator, prompts, lengths, drafts=drafts, logprobs=logprobs) == expected
    assert drafter.stats.rate == 1.0


def test_drafting_turns_down_as_the_batch_grows() -> None:
    assert depth(4, 1) == 4
    assert depth(4, 8) == 4
    assert depth(4, 16) == 2
    assert depth(4, DRAFT_BUDGET) == 1
    assert depth(4, DRAFT_BUDGET + 1) == 0
    assert depth(4, 0) == 0


def test_accepted_counts_leading_agreement() -> None:
    assert accepted([1, 2, 3], [1, 2, 4, 5], 3) == 2
    assert accepted([1, 2, 3], [1, 2, 3, 5], 3) == 3
    assert accepted([1, 2, 3], [1, 2, 3, 5], 1) == 1
    assert accepted([9, 2, 3], [1, 2, 3, 5], 3) == 0


def test_caches_that_cannot_roll_back_are_refused(target: Any) -> None:
    windowed = _model(3, {**CONFIG, "model_type": "gemma3_text", "sliding_window": 8,
                          "sliding_window_pattern": 2, "query_pre_attn_scalar": 16})  # fmt: skip
    with pytest.raises(SpeculationError, match="cannot roll back"):
        Drafter.check(windowed, target)


def _close(counts: list[int], p: list[float]) -> None:
    """Empirical frequencies within 5 standard errors of `p` (the sample count sets it)."""
    total = sum(counts)
    for token, (c, q) in enumerate(zip(counts, p, strict=True)):
        sigma = (q * (1 - q) / total) ** 0.5
        assert abs(c / total - q) <= 5 * sigma + 1e-3, (token, c / total, q)


SAMPLERS = {
    "temperature": Tempered(1.0),
    "top-p": Filtered(0.8, top_p=0.7),
    "top-k": Filtered(1.0, top_k=3),
    "min-p": Filtered(1.2, min_p=0.1),
    "top-k-top-p": Filtered(0.9, top_p=0.9, top_k=4),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_rejection_sampling_keeps_the_target_distribution(name: str) -> None:
    """Guesses drawn from the draft's q (the row's filters and temperature on the draft's
    logits), verified against p (the same on the target's): the first token after them
    follows p at its place, and the next one (where the first stood) follows p at its own."""
    mx.random.seed(0)
    sampler = SAMPLERS[name]
    rows, vocab, k = 20000, 8, 2
    target = mx.random.normal((1, k + 1, vocab)) * 1.5
    draft = distributions(mx.random.normal((1, k, vocab)) * 1.5, [sampler])
    drawn = mx.broadcast_to(draft, (rows, k, vocab))
    guesses = mx.random.categorical(mx.log(drawn))
    logits = mx.broadcast_to(target, (rows, k + 1, vocab))
    kept, nexts = verify(logits, guesses, drawn, [sampler] * rows, [k] * rows)
    guessed = guesses.tolist()
    first = [g[0] if n >= 1 else t for g, n, t in zip(guessed, kept, nexts, strict=True)]
    second = [g[1] if n >= 2 else t for g, n, t in zip(guessed, kept, nexts, strict=True) if n >= 1]
    p = sampler.probabilities(target[0]).tolist()
    if name != "temperature":  # the filters remove tokens, from p and from q
        assert 0 < sum(x == 0 for x in p[0]) < vocab
        assert sum(x == 0 for x in draft[0, 0].tolist()) > 0
    _close([first.count(t) for t in range(vocab)], p[0])
    _close([second.count(t) for t in range(vocab)], p[1])
    assert 0 < sum(kept) < 2 * rows  # some guesses stand, some do not


@pytest.mark.parametrize("name", ["temperature", "top-p", "top-k"])
def test_sampled_tokens_follow_the_target_distribution(name: str) -> None:
    """Through the generator: the second token of many sampled requests (drafted and verified,
    the first comes from the prompt) follows the sampler's distribution on the target's
    logits, marginal over the first; the draft is a perturbed copy that agrees often, not
    always."""
    mx.random.seed(1)
    sampler = SAMPLERS[name]
    small = {**CONFIG, "vocab_size": 16}
    target, draft = _model(5, small), _model(5, small, noise=0.1)
    prompt = [3, 1, 4, 1, 5]
    p_first = sampler.probabilities(target(mx.array([prompt]))[:, -1])[0]
    following = target(mx.array([[*prompt, t] for t in range(16)]))[:, -1]
    expected = (p_first[:, None] * sampler.probabilities(following)).sum(axis=0).tolist()
    drafter = Drafter(draft, num_draft_tokens=2, chunk=16)
    generator = SlotGenerator(target, completion_batch_size=16, prefill_batch_size=16,
                              prefill_step_size=16, drafter=drafter)  # fmt: skip
    seconds: list[int] = []
    for _ in range(100):
        uids = generator.insert([prompt] * 16, max_tokens=[2] * 16, samplers=[sampler] * 16)
        out: dict[int, list[int]] = {u: [] for u in uids}
        while generator.pending or generator.running:
            for r in generator.next()[1]:
                out[r.uid].append(r.token)
        seconds += [tokens[1] for tokens in out.values()]
    _close([seconds.count(t) for t in range(16)], expected)
    assert 0.0 < drafter.stats.rate < 1.0


def test_penalized_rows_beside_guessing_rows_are_unchanged(target: Any) -> None:
    """Rows with logits processors (a repetition penalty) decode plainly in speculative steps:
    the batch's tokens equal the same batch's without a draft."""
    from mlx_lm.sample_utils import make_logits_processors

    penalty = make_logits_processors(repetition_penalty=1.5, repetition_context_size=8)
    prompts = _prompts(9, 6)
    lengths = [MAX_TOKENS] * len(prompts)
    processors = [penalty if i % 2 else None for i in range(len(prompts))]

    def tokens(drafter: Drafter | None) -> list[list[int]]:
        generator = SlotGenerator(target, completion_batch_size=8, prefill_batch_size=2,
                                  prefill_step_size=16, drafter=drafter)  # fmt: skip
        return _batched(generator, prompts, lengths, logits_processors=processors)

    drafter = Drafter(target, num_draft_tokens=3, chunk=16)
    plain = tokens(None)
    assert tokens(drafter) == plain
    assert drafter.stats.drafted > 0
    unpenalized = [_single(target, p, n) for p, n in zip(prompts, lengths, strict=True)]
    assert plain[0::2] == unpenalized[0::2]
    assert plain[1::2] != unpenalized[1::2]  # the penalty changes the penalized rows' tokens


def test_filtered_rows_speculate_beside_exact_greedy_rows(target: Any) -> None:
    """Rows with top-p, top-k or min-p (and temperature) read guesses too: the draft's tokens
    are counted for them; the greedy rows beside them keep the target's own tokens."""
    mx.random.seed(2)
    filtered = [SAMPLERS["top-p"], SAMPLERS["top-k"], SAMPLERS["min-p"]]
    prompts = _prompts(10, 6)
    samplers = [greedy, filtered[0], greedy, filtered[1], greedy, filtered[2]]
    drafter = Drafter(_model(3, noise=0.02), num_draft_tokens=3, chunk=16)
    generator = SlotGenerator(target, completion_batch_size=8, prefill_batch_size=6,
                              prefill_step_size=16, drafter=drafter)  # fmt: skip
    uids = generator.insert(prompts, max_tokens=[MAX_TOKENS] * 6, samplers=samplers)
    out: dict[int, list[int]] = {u: [] for u in uids}
    while generator.pending or generator.running:
        for r in generator.next()[1]:
            out[r.uid].append(r.token)
    tokens = [out[u] for u in uids]
    assert tokens[0::2] == [_single(target, p, MAX_TOKENS) for p in prompts[0::2]]
    assert all(len(t) == MAX_TOKENS for t in tokens)
    only = SlotGenerator(target, prefill_step_size=16, drafter=Drafter(target, 3, chunk=16))
    assert only.drafter is not None
    only.insert(prompts[1::2], max_tokens=[8] * 3, samplers=filtered)
    while only.pending or only.running:
        only.next()
    assert only.drafter.stats.drafted > 0 and only.drafter.stats.accepted > 0
