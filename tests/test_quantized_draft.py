"""A draft model beside quantized keys and values (`engine.kv_bits` with `draft_model`):
speculating greedy rows on quantized slots yield the engine's own plain tokens on the same
quantized cache, which are mlx-lm's single stream on its quantized cache; a verification pass
that crosses `quantized_kv_start` keeps them; a slot's length set back reads as a slot that
never held the rejected positions, in every state of its history."""

from __future__ import annotations

import random
from typing import Any

import mlx.core as mx
import pytest
from mlx.utils import tree_map_with_path
from mlx_lm.generate import generate_step
from mlx_lm.models import llama

from mlxdeploy.engine.generator import SlotGenerator
from mlxdeploy.engine.quantized_slots import KVQuantization, SlotQuantizedKVCache
from mlxdeploy.engine.sampling import greedy
from mlxdeploy.engine.speculative import Drafter
from mlxdeploy.engine.storage import Call, Slots
from tests.batched import batched as _batched
from tests.test_quantized_kv import CONFIG, VOCAB, _single

CHUNK = 16


def _llama(seed: int, noise: float = 0.0) -> Any:
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(CONFIG))
    louder = lambda path, w: w if "norm" in path or w.ndim < 2 else w * 3  # noqa: E731
    model.update(tree_map_with_path(louder, model.parameters()))
    if noise:  # a copy of seed's model, slightly off: a draft that agrees often, not always
        model.update(tree_map_with_path(lambda _, w: w + noise * mx.random.normal(w.shape),
                                        model.parameters()))  # fmt: skip
    mx.eval(model.parameters())
    return model


@pytest.fixture(scope="module")
def target() -> Any:
    return _llama(5)


@pytest.fixture(scope="module")
def drafts(target: Any) -> dict[str, Any]:
    return {"itself": target, "perturbed": _llama(5, noise=0.02), "unrelated": _llama(6)}


def _prompts(seed: int, n: int, low: int, high: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, VOCAB) for _ in range(rng.randrange(low, high))] for _ in range(n)]


def _generator(model: Any, kv: KVQuantization, drafter: Drafter | None) -> SlotGenerator:
    return SlotGenerator(model, completion_batch_size=16, prefill_batch_size=2,
                         prefill_step_size=CHUNK, kv=kv, drafter=drafter)  # fmt: skip


@pytest.mark.parametrize(
    "kv",
    [KVQuantization(4, 32), KVQuantization(8, 32), KVQuantization(4, 32, start=CHUNK)],
    ids=["4-bit", "8-bit", "4-bit-from-16"],
)
def test_batched_speculating_rows_on_quantized_keys_yield_the_plain_tokens(
    target: Any, drafts: dict[str, Any], kv: KVQuantization
) -> None:
    """Rows read in pairs, then arriving while others speculate: each row's greedy tokens are
    the same engine's without a draft, and mlx-lm's single stream on its quantized cache. (At
    start 16 every prompt crosses it between chunks, before any verification.)"""
    prompts = _prompts(kv.bits + kv.start, 8, 20, 45)
    lengths = [20 - (i % 3) * 4 for i in range(len(prompts))]
    expected = [_single(target, p, n, kv) for p, n in zip(prompts, lengths, strict=True)]
    assert len({t for tokens in expected for t in tokens}) > len(prompts), "tokens too uniform"
    assert _batched(_generator(target, kv, None), prompts, lengths) == expected
    drafter = Drafter(drafts["perturbed"], num_draft_tokens=4, chunk=CHUNK)
    assert _batched(_generator(target, kv, drafter), prompts, lengths) == expected
    assert 0.0 < drafter.stats.rate < 1.0, drafter.stats.rate  # guesses stand and fall
    assert not any(isinstance(c, SlotQuantizedKVCache) for c in drafter.slots.caches)


@pytest.mark.parametrize("draft", ["itself", "perturbed", "unrelated"])
def test_lone_rows_speculating_across_quantized_kv_start_keep_the_plain_tokens(
    target: Any, drafts: dict[str, Any], draft: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lone rows whose prompts end below `start` and whose decoding crosses it: a row below
    `start` keeps no guess past it, so each history is quantized whole when its length is
    `start`, as in plain steps, and the tokens are the engine's plain ones and mlx-lm's
    single stream quantized at `start`."""
    kv = KVQuantization(4, 32, start=32)
    prompts = _prompts(21, 6, 12, 30)
    n = 24
    expected = [_single(target, p, n, kv) for p in prompts]
    assert expected != [_unquantized(target, p, n) for p in prompts]  # quantization shows
    plain = _generator(target, kv, None)
    assert [_batched(plain, [p], [n])[0] for p in prompts] == expected
    converted = _spy_conversions(monkeypatch)
    drafter = Drafter(drafts[draft], num_draft_tokens=4, chunk=CHUNK)
    generator = _generator(target, kv, drafter)
    assert [_batched(generator, [p], [n])[0] for p in prompts] == expected
    assert converted == [kv.start] * len(prompts)  # quantized whole at `start`, each row
    assert drafter.stats.drafted > 0
    if draft != "unrelated":  # (a draft reads full precision: past start it errs at times)
        assert drafter.stats.accepted > 0


def test_a_verification_pass_that_crosses_quantized_kv_start(
    target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row A (28 prompt tokens, start 32) speculates beside row B (5 tokens) whose 4 guesses
    set the pass's width: A's pass writes positions 28 to 32, on both sides of `start`, in
    full precision, keeps 3 guesses, and its length set back to 32 is quantized whole by the
    next step. B ends in that pass, below `start` all along (never read quantized beside A).
    Both rows' tokens are mlx-lm's single streams quantized at `start`."""
    kv = KVQuantization(4, 32, start=32)
    rng = random.Random(3)
    a, b = ([rng.randrange(1, VOCAB) for _ in range(n)] for n in (28, 5))
    lengths = [24, 7]
    expected = [_single(target, p, n, kv) for p, n in zip((a, b), lengths, strict=True)]
    crossing: list[tuple[int, int]] = []
    update = SlotQuantizedKVCache.update_and_fetch

    def spy(self: SlotQuantizedKVCache, keys: mx.array, values: mx.array) -> Any:
        call = self._active().call
        if self is self.slots.caches[0]:  # a row's positions on both sides of start
            crossing.extend((s, call.width) for s in call.starts if s < kv.start < s + call.width)
        return update(self, keys, values)

    monkeypatch.setattr(SlotQuantizedKVCache, "update_and_fetch", spy)
    converted = _spy_conversions(monkeypatch)
    drafter = Drafter(target, num_draft_tokens=4, chunk=CHUNK)
    generator = _generator(target, kv, drafter)
    uids = generator.insert([a, b], max_tokens=lengths, samplers=[greedy] * 2)
    out: dict[int, list[int]] = {u: [] for u in uids}
    while generator.pending or generator.running:
        for r in generator.next()[1]:
            out[r.uid].append(r.token)
    assert [out[u] for u in uids] == expected
    assert (28, 5) in crossing, crossing
    assert converted == [kv.start]


def _unquantized(model: Any, prompt: list[int], n: int) -> list[int]:
    steps = generate_step(mx.array(prompt), model, sampler=greedy)
    return [int(t) for (t, _), _ in zip(steps, range(n), strict=False)]


def _spy_conversions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The lengths at which the first layer's slots are quantized whole, from now on."""
    converted: list[int] = []
    convert = SlotQuantizedKVCache._convert

    def spy(self: SlotQuantizedKVCache, slot: int, length: int) -> None:
        if self is self.slots.caches[0]:
            converted.append(length)
        convert(self, slot, length)

    monkeypatch.setattr(SlotQuantizedKVCache, "_convert", spy)
    return converted


def _forward(model: Any, slots: Slots, rows: list[int], tokens: list[list[int]]) -> mx.array:
    slots.plan(rows, len(tokens[0]))
    logits = model(mx.array(tokens), cache=slots.caches)
    slots.advance(rows, [len(tokens[0])] * len(rows))
    mx.eval(logits, slots.arrays())
    return logits


@pytest.mark.parametrize(
    ("length", "kept"),
    [(3, 1), (21, 2), (24, 1), (30, 0)],
    ids=["below-start", "back-to-start", "quantized-by-the-pass", "long-quantized"],
)
def test_a_slot_set_back_reads_as_one_that_never_held_the_rejected_positions(
    target: Any, length: int, kept: int
) -> None:
    """Slot 0 holds `length` tokens (start 24: below it, reaching it in the pass, at it but not
    quantized yet, long quantized), reads a pass of 5 (a token and four guesses), keeps the
    first 1 + `kept`: its length set back, the next step (beside a longer slot, so positions
    past its length are in the call's keys, masked) gives the same logits whatever the
    rejected guesses were, bit for bit, and nearly those of a slot that never read them."""
    kv = KVQuantization(4, 32, start=24)
    rng = random.Random(length)
    history = [rng.randrange(1, VOCAB) for _ in range(length)]
    other = [rng.randrange(1, VOCAB) for _ in range(40)]
    real = [rng.randrange(1, VOCAB) for _ in range(1 + kept)]

    def after(rejected: list[int] | None) -> mx.array:
        slots = Slots.for_model(target, CHUNK, kv.holder)
        slots.take(), slots.take()
        for at in range(0, len(other), 8):
            _forward(target, slots, [1], [other[at : at + 8]])
        for at in range(0, len(history), 8):
            _forward(target, slots, [0], [history[at : at + 8]])
        if rejected is None:  # never read past the kept tokens
            _forward(target, slots, [0], [real])
        else:
            _forward(target, slots, [0], [real + rejected])
            slots.lengths[0] = length + len(real)
        cache = slots.caches[0]
        assert isinstance(cache, SlotQuantizedKVCache)
        assert (0 in cache.quantized) == (length >= kv.start)  # the state named by the id
        call = slots.prepare([0, 1], 1).call
        assert call == Call((0, 1), (length + len(real), len(other)), 1)
        return _forward(target, slots, [0, 1], [[7], [9]])[0, -1]

    first = after([rng.randrange(1, VOCAB) for _ in range(4 - kept)])
    second = after([rng.randrange(1, VOCAB) for _ in range(4 - kept)])
    assert mx.array_equal(first, second)
    assert mx.allclose(first, after(None), atol=0.05, rtol=0.05)
