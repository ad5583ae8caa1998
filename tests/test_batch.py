"""mlxdeploy/engine/batch.py: the same tokens as mlx-lm's BatchGenerator, with its own schedule
and rows reused in place. What batch.py relies on of mlx-lm's private shape is pinned in
tests/test_mlx_lm_internals.py."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from mlx_lm.generate import BatchGenerator
from mlx_lm.utils import load

from mlxdeploy.engine import batch as batch_module
from mlxdeploy.engine import slots
from mlxdeploy.engine.batch import RETIRED, FastBatchGenerator, LogitsGenerationBatch
from mlxdeploy.engine.sampling import SamplerKey, SeededSampler, greedy

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    return load(str(tiny_model_dir))[0]


def _generate(model: Any, generator_cls: type, prompts: list[list[int]]) -> dict[int, list[int]]:
    """Greedy tokens per prompt; prompts end at different lengths and the later ones join
    while the first decode, so rows retire, compact and join between steps."""
    generator = generator_cls(model, completion_batch_size=8, prefill_batch_size=2)
    lengths = [MAX_TOKENS - 2 * (i % 4) for i in range(len(prompts))]
    uids = generator.insert(prompts, max_tokens=lengths, samplers=[greedy] * len(prompts))
    out: dict[int, list[int]] = {uid: [] for uid in uids}
    ended: set[int] = set()
    while len(ended) < len(uids):
        for response in generator.next_generated():
            out[response.uid].append(response.token)
            if response.finish_reason is not None:
                ended.add(response.uid)
    return {uids.index(uid): tokens for uid, tokens in out.items()}


def test_the_generator_decodes_with_its_own_batch(model: Any) -> None:
    generator = FastBatchGenerator(model, completion_batch_size=4, prefill_batch_size=4)
    assert type(generator.generation_batch) is LogitsGenerationBatch
    generator.insert([[5, 6, 7]], max_tokens=[1], samplers=[greedy])
    assert generator.waiting == 1 and generator.pending == 1


def test_fast_batch_generates_the_same_tokens_as_mlx_lm(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 40000) for _ in range(rng.randrange(3, 40))] for _ in range(9)]
    steps = []
    fast_step = LogitsGenerationBatch.step

    def counted(self: LogitsGenerationBatch) -> tuple[list[int], list[Any]]:
        steps.append(len(self.uids))
        return fast_step(self)

    monkeypatch.setattr(LogitsGenerationBatch, "step", counted)
    ours = _generate(model, FastBatchGenerator, prompts)
    assert steps, "FastBatchGenerator decoded without LogitsGenerationBatch.step"
    assert ours == _generate(model, BatchGenerator, prompts)


def test_rows_placed_into_ended_rows_and_trimmed_decode_the_same(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New rows written into the slots of ended ones, and the shared length trimmed at every
    step, give the same tokens as mlx-lm's cut-and-append batch."""
    rng = random.Random(1)
    prompts = [[rng.randrange(100, 40000) for _ in range(rng.randrange(2, 12))] for _ in range(9)]
    placed: list[int] = []
    place = slots.place_rows

    def counted(cache: Any, incoming: Any, free: Any, lengths: Any) -> None:
        placed.append(len(free))
        place(cache, incoming, free, lengths)

    monkeypatch.setattr(slots, "place_rows", counted)
    monkeypatch.setattr(slots, "TRIM_AT", 1)
    monkeypatch.setattr(batch_module, "TRIM_EVERY", 1)
    ours = _generate(model, FastBatchGenerator, prompts)
    assert placed, "no row was placed into an ended row's slot"
    assert ours == _generate(model, BatchGenerator, prompts)


class Calls:
    """Counts the model's forward passes and the tokens each reads."""

    def __init__(self, model: Any):
        self.model, self.shapes = model, []

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        self.shapes.append(tuple(inputs.shape))
        return self.model(inputs, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def _decoding(model: Any, rows: int, wait: int = 0) -> FastBatchGenerator:
    generator = FastBatchGenerator(
        model, completion_batch_size=16, prefill_batch_size=4, prefill_wait_steps=wait
    )
    generator.insert([[5, 6, 7]] * rows, max_tokens=[1000] * rows, samplers=[greedy] * rows)
    while generator.generation_batch.live < rows:
        generator.next()
    return generator


def test_a_prompt_joins_the_decode_step_without_a_pass_of_its_own(model: Any) -> None:
    """Its prompt but the last token is read in one prefill call; the next decode step reads
    that token with the batch and samples its first token: no forward pass at batch 1."""
    calls = Calls(model)
    generator = _decoding(calls, rows=3)
    calls.shapes.clear()
    (uid,) = generator.insert([[9, 10, 11, 12, 13]], max_tokens=[4], samplers=[greedy])
    prompt_responses, _ = generator.next()
    assert calls.shapes == [(3, 1), (1, 4)]  # the decode step, then the prompt but its last
    assert [r.end_of_prompt for r in prompt_responses if r.uid == uid] == [False, True]
    _, responses = generator.next()
    assert calls.shapes[2:] == [(4, 1)]
    assert uid not in [r.uid for r in responses]  # this step read its prompt's last token
    _, responses = generator.next()
    assert uid in [r.uid for r in responses]


def test_prompts_wait_for_a_group_while_the_batch_decodes(model: Any) -> None:
    calls = Calls(model)
    generator = _decoding(calls, rows=2, wait=3)
    calls.shapes.clear()
    generator.insert([[9, 10, 11]], max_tokens=[4], samplers=[greedy])
    for _ in range(2):
        generator.next()
    assert calls.shapes == [(2, 1), (2, 1)] and generator.waiting == 1
    generator.next()  # the third step: it has waited prefill_wait_steps
    assert calls.shapes[2:] == [(2, 1), (1, 2)] and generator.waiting == 0
    calls.shapes.clear()
    generator.insert([[9, 10, 11]] * 4, max_tokens=[4] * 4, samplers=[greedy] * 4)
    generator.next()  # a full group (prefill_batch_size) goes at once, in one call
    assert calls.shapes == [(3, 1), (4, 2)]


def test_an_idle_batch_reads_a_prompt_at_once(model: Any) -> None:
    calls = Calls(model)
    generator = FastBatchGenerator(calls, prefill_batch_size=4, prefill_wait_steps=100)
    generator.insert([[9, 10, 11]], max_tokens=[2], samplers=[greedy])
    generator.next()
    assert calls.shapes == [(1, 2)]


def test_ended_rows_retire_and_leave_in_one_compaction(model: Any) -> None:
    generator = _decoding(model, rows=10)
    batch = generator.generation_batch
    uids = list(batch.uids)
    generator.remove(uids[:1])
    assert len(batch.uids) == 10 and batch.live == 9  # retired, still computed
    generator.next()
    generator.remove(uids[1:2])  # two of ten: more than an eighth
    generator.next()
    assert batch.uids == uids[2:] and batch.retired == 0


def test_retired_rows_share_a_live_rows_sampler_but_never_a_seeded_one(model: Any) -> None:
    """So a batch with ended rows still samples in one call per distinct sampler."""
    seeded = SeededSampler(SamplerKey(temperature=1.0), seed=7)
    generator = FastBatchGenerator(model, completion_batch_size=8, prefill_batch_size=8)
    samplers = [seeded, greedy, greedy, greedy]
    uids = generator.insert([[5, 6, 7]] * 4, max_tokens=[1000] * 4, samplers=samplers)
    while generator.generation_batch.live < 4:
        generator.next()
    batch = generator.generation_batch
    generator.insert([[8, 9, 10, 11]], max_tokens=[4], samplers=[greedy])  # keeps rows retired
    generator.remove(uids[1:2])
    assert batch.retired == 1 and batch.samplers[batch.uids.index(RETIRED)] is greedy
    generator.remove([uids[2], uids[3]])  # only the seeded row is live: the fallback
    retired = [s for s, u in zip(batch.samplers, batch.uids, strict=True) if u == RETIRED]
    assert len(retired) == 3 and seeded not in retired
