"""engine/generator.py and engine/storage.py: mlxdeploy's own generation loop over slot storage,
on the tiny llama. Tokens are held to mlx-lm's single-stream `generate_step`."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load

from mlxdeploy.engine import storage
from mlxdeploy.engine.generator import SlotGenerator, Token
from mlxdeploy.engine.mixed import MixedForward
from mlxdeploy.engine.sampling import greedy
from tests.test_batch import Calls


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    return load(str(tiny_model_dir))[0]


def single(model: Any, prompt: list[int], n: int) -> list[int]:
    steps = generate_step(mx.array(prompt), model, max_tokens=n, sampler=greedy)
    return [int(token) for (token, _), _ in zip(steps, range(n), strict=False)]


def run(generator: SlotGenerator, until: set[int]) -> dict[int, list[Token]]:
    out: dict[int, list[Token]] = {}
    while not until <= {u for u, ts in out.items() if ts[-1].finish_reason}:
        for token in generator.next()[1]:
            out.setdefault(token.uid, []).append(token)
    return out


def prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, 40000) for _ in range(rng.randrange(5, 60))] for _ in range(n)]


def test_the_first_token_comes_from_the_prompt_read_and_batch_one_has_no_mask(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Calls(model)
    masks: list[Any] = []
    activate = storage.Slots.activate

    def planned(self: storage.Slots, call: storage.Planned) -> None:
        activate(self, call)
        masks.append((call.call.width, call.mask, call.offset))

    monkeypatch.setattr(storage.Slots, "activate", planned)
    generator = SlotGenerator(calls, prefill_step_size=512)
    (prompt,) = prompts(1, seed=0)
    (uid,) = generator.insert_segments([[prompt]], max_tokens=[6], samplers=[greedy])
    tokens = [t.token for t in run(generator, {uid})[uid]]
    assert tokens == single(model, prompt, 6)
    # One pass reads the whole prompt and gives the first token; one pass per token after.
    assert calls.shapes == [(1, len(prompt))] + [(1, 1)] * 6
    assert masks[0][1] == "causal" and {m for w, m, _ in masks[1:]} == {None}
    assert all(isinstance(offset, int) for _, _, offset in masks)


def test_rows_join_and_leave_through_their_own_slots_only(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests of different lengths arrive while others decode and end at different steps:
    each takes the lowest free slot, and the stores grow only by whole blocks, never once per
    arrival or departure. Every request's tokens are its single-stream tokens."""
    grown: list[int] = []
    grow = storage.grow

    def counted(a: mx.array, axis: int, more: int) -> mx.array:
        grown.append(axis)
        return grow(a, axis, more)

    monkeypatch.setattr(storage, "grow", counted)
    generator = SlotGenerator(model, completion_batch_size=4, prefill_batch_size=2)
    batch = prompts(10, seed=1)
    lengths = [3 + (i * 5) % 9 for i in range(len(batch))]
    uids = generator.insert_segments(
        [[p] for p in batch[:4]], max_tokens=lengths[:4], samplers=[greedy] * 4
    )
    out: dict[int, list[int]] = {}
    taken: list[int] = []
    while len([u for u in uids if u in out and len(out[u]) == lengths[uids.index(u)]]) < 10:
        if len(uids) < 10 and generator.pending == 0:
            i = len(uids)
            (uid,) = generator.insert_segments([[batch[i]]], [lengths[i]], samplers=[greedy])
            uids.append(uid)
        for token in generator.next()[1]:
            out.setdefault(token.uid, []).append(token.token)
        taken.append(generator.slots.used)
    for uid, prompt, n in zip(uids, batch, lengths, strict=True):
        assert out[uid] == single(model, prompt, n)
    assert max(taken) <= 4 and len(generator.slots.lengths) == 4
    layers = len(make_prompt_cache(model))
    assert len(grown) <= 2 * layers, "a store grew more than once (positions) per layer"


def test_a_cached_prefix_is_written_into_the_slot_and_only_the_rest_is_read(
    model: Any,
) -> None:
    (prompt,) = prompts(1, seed=2)
    prompt = prompt + prompt  # long enough to split
    first = SlotGenerator(model)
    (uid,) = first.insert_segments([[prompt]], max_tokens=[4], samplers=[greedy])
    answer = run(first, {uid})[uid]
    ended = answer[-1]
    # An ended request hands back its cache and the tokens it holds, for the prefix cache.
    assert ended.prompt_cache is not None and ended.all_tokens is not None
    assert ended.all_tokens == prompt + [t.token for t in answer]
    assert ended.prompt_cache[0].offset == len(ended.all_tokens)
    # The prefix cache keeps a prompt's start: here, the cache of its first half.
    calls = Calls(model)
    half = len(prompt) // 2
    reader = SlotGenerator(model)
    (h,) = reader.insert_segments([[prompt[:half]]], max_tokens=[1], samplers=[greedy])
    reader.next()
    prefix = reader.extract_cache([h])[h][0]
    second = SlotGenerator(calls)
    (uid,) = second.insert_segments(
        [[prompt[half:]]],
        max_tokens=[4],
        caches=[prefix],
        all_tokens=[prompt[:half]],
        samplers=[greedy],
    )
    tokens = [t.token for t in run(second, {uid})[uid]]
    assert tokens == single(model, prompt, 4)
    assert calls.shapes[0] == (1, len(prompt) - half)


def test_a_removed_request_frees_its_slot_wherever_it_is(model: Any) -> None:
    generator = SlotGenerator(model, prefill_step_size=16, prefill_batch_size=1)
    a, b, c = prompts(3, seed=3)
    uids = generator.insert_segments([[a], [b * 3], [c]], max_tokens=[8] * 3, samplers=[greedy] * 3)
    generator.next()  # a is read; b and c wait
    generator.next()  # a decodes; b's first chunk is read
    generator.remove([uids[1]])  # b leaves mid-read
    out = run(generator, {uids[0], uids[2]})
    assert [t.token for t in out[uids[0]]] == single(model, a, 8)
    assert [t.token for t in out[uids[2]]] == single(model, c, 8)
    assert uids[1] not in out and generator.slots.used == 0


@pytest.mark.parametrize("mix", [True, False])
def test_prompts_read_inside_decode_steps_give_the_same_tokens(
    model: Any, monkeypatch: pytest.MonkeyPatch, mix: bool
) -> None:
    """Long prompts arrive while another request decodes: with mixing, their chunks ride in
    the decode steps' forward passes (no pass of their own); without, they take passes of
    their own between decode steps. Both answers are the single-stream ones."""
    shapes: list[tuple[int, ...]] = []
    call = type(model).__call__

    def whole(self: Any, inputs: mx.array, *args: Any, **kwargs: Any) -> mx.array:
        shapes.append(tuple(inputs.shape))
        return call(self, inputs, *args, **kwargs)

    monkeypatch.setattr(type(model), "__call__", whole)
    mixed: list[int] = []
    forward = MixedForward.__call__

    def counted(self: MixedForward, slots: Any, parts: Any, *args: Any) -> mx.array:
        mixed.append(len(parts))
        return forward(self, slots, parts, *args)

    monkeypatch.setattr(MixedForward, "__call__", counted)
    generator = SlotGenerator(model, prefill_step_size=16, mix=mix)
    short = prompts(1, seed=4)[0][:10]
    long = [100 + (i * 7919) % 30000 for i in range(70)]
    (a,) = generator.insert_segments([[short]], max_tokens=[12], samplers=[greedy])
    generator.next()  # `short` is read alone
    other = long[7:52]  # read beside `long`, right-padded where its chunk is shorter
    b, c = generator.insert_segments([[long], [other]], max_tokens=[5, 4], samplers=[greedy] * 2)
    out = run(generator, {a, b, c})
    seen = list(shapes)
    assert [t.token for t in out[a]] == single(model, short, 12)
    assert [t.token for t in out[b]] == single(model, long, 5)
    assert [t.token for t in out[c]] == single(model, other, 4)
    if mix:
        # `short` read alone (one part: only its last position through the vocabulary
        # projection), then 70 tokens in chunks of 16 inside five decode steps; the model's
        # own forward only decodes.
        assert mixed == [1] + [2] * 5
        assert {s[1] for s in seen} == {1}
    else:
        assert not mixed and (1, 16) in seen


def test_the_choices_of_one_request_read_its_prompt_once(model: Any) -> None:
    """n choices: one prompt read, then each choice decodes from its own copy of its slot;
    greedy choices all give the single-stream answer."""
    calls = Calls(model)
    generator = SlotGenerator(calls, prefill_step_size=16)
    (prompt,) = prompts(1, seed=6)
    prompt = (prompt * 3)[:40]
    uids = generator.insert_segments(
        [[prompt]] * 3, max_tokens=[6, 4, 6], samplers=[greedy] * 3, shared=True
    )
    out = run(generator, set(uids))
    reads = [shape for shape in calls.shapes if shape[1] > 1]
    assert reads == [(1, 16), (1, 16), (1, 8)]  # the prompt, once, in chunks
    expected = single(model, prompt, 6)
    assert [[t.token for t in out[u]] for u in uids] == [expected, expected[:4], expected]
    assert generator.slots.used == 0


def test_a_choice_that_stays_reads_the_prompt_when_the_first_leaves(model: Any) -> None:
    generator = SlotGenerator(model, prefill_step_size=16)
    (prompt,) = prompts(1, seed=7)
    prompt = (prompt * 3)[:40]
    first, second = generator.insert_segments(
        [[prompt]] * 2, max_tokens=[5, 5], samplers=[greedy] * 2, shared=True
    )
    generator.next()  # the first chunk is read
    generator.remove([first])
    out = run(generator, {second})
    assert [t.token for t in out[second]] == single(model, prompt, 5)
    assert first not in out and generator.slots.used == 0
