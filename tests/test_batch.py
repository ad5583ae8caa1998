"""mlxdeploy/engine/batch.py against the mlx-lm it builds on.

batch.py overrides mlx-lm's private `GenerationBatch._step` and reads private attributes of
`GenerationBatch` and `BatchGenerator`; pyproject pins mlx-lm's minor version for that. These
tests say what changed when a new mlx-lm moves that private shape, before tokens go wrong."""

from __future__ import annotations

import inspect
import random
import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from mlx_lm.generate import BatchGenerator, GenerationBatch, PromptProcessingBatch
from mlx_lm.utils import load
from packaging.requirements import Requirement

from mlxdeploy.engine import batch as batch_module
from mlxdeploy.engine import slots
from mlxdeploy.engine.batch import RETIRED, FastBatchGenerator, LogitsGenerationBatch
from mlxdeploy.engine.sampling import SamplerKey, SeededSampler, greedy

PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"
# What LogitsGenerationBatch._step reads and writes on the batch (mlx-lm sets them all in
# GenerationBatch.__init__).
BATCH_ATTRIBUTES = {
    "model", "uids", "prompt_cache", "tokens", "samplers", "fallback_sampler",
    "logits_processors", "_current_tokens", "_current_logprobs", "_next_tokens",
    "_next_logprobs", "_token_context",
}  # fmt: skip
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    return load(str(tiny_model_dir))[0]


def _source(obj: object) -> str:
    return inspect.getsource(obj)  # type: ignore[arg-type]


def test_the_installed_mlx_lm_is_the_pinned_minor_version() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (pin,) = [Requirement(d) for d in dependencies if Requirement(d).name == "mlx-lm"]
    assert any(s.operator == "<" for s in pin.specifier), (
        f"pyproject must pin mlx-lm's minor version (batch.py uses its private API): {pin}"
    )
    installed = metadata.version("mlx-lm")
    assert pin.specifier.contains(installed), f"mlx-lm {installed} is outside the pin {pin}"


def test_generation_batch_step_has_the_shape_batch_py_overrides() -> None:
    step = getattr(GenerationBatch, "_step", None)
    assert step is not None, "mlx-lm's GenerationBatch no longer has _step; batch.py overrides it"
    params = list(inspect.signature(step).parameters)
    assert params == ["self"], f"GenerationBatch._step now takes {params}, batch.py takes (self)"
    assert re.search(r"tokens, logprobs = self\._step\(\)", _source(GenerationBatch.next)), (
        "GenerationBatch.next no longer unpacks (tokens, logprobs) from self._step()"
    )
    assert "self._step()" in _source(GenerationBatch.__init__), (
        "GenerationBatch.__init__ no longer runs the first step through self._step()"
    )
    assert "_sample" not in vars(GenerationBatch), (
        "mlx-lm's GenerationBatch now has its own _sample, which batch.py's _sample would shadow"
    )
    empty = list(inspect.signature(GenerationBatch.empty).parameters)
    assert empty == ["model", "fallback_sampler"], f"GenerationBatch.empty now takes {empty}"


def test_generation_batch_has_the_attributes_batch_py_reads(model: Any) -> None:
    batch = GenerationBatch.empty(model, greedy)
    missing = BATCH_ATTRIBUTES - set(vars(batch))
    assert not missing, f"mlx-lm's GenerationBatch no longer sets {sorted(missing)}"


def test_batch_generator_keeps_one_generation_batch_and_a_queue(model: Any) -> None:
    generator = FastBatchGenerator(model, completion_batch_size=4, prefill_batch_size=4)
    assert hasattr(generator, "_unprocessed_sequences"), (
        "mlx-lm's BatchGenerator no longer has _unprocessed_sequences (FastBatchGenerator.waiting)"
    )
    assert type(generator._generation_batch) is LogitsGenerationBatch
    assigned = re.findall(r"self\._generation_batch = ", _source(BatchGenerator))
    assert len(assigned) == 1, (
        "mlx-lm's BatchGenerator now replaces _generation_batch after __init__, so "
        "FastBatchGenerator's LogitsGenerationBatch would stop deciding the decode step"
    )
    assert "self._generation_batch.extend(" in _source(BatchGenerator), (
        "mlx-lm's BatchGenerator no longer merges new sequences into _generation_batch"
    )
    generator.insert([[5, 6, 7]], max_tokens=[1], samplers=[greedy])
    assert generator.waiting == 1


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


def test_fast_batch_generates_the_same_tokens_as_mlx_lm(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 40000) for _ in range(rng.randrange(3, 40))] for _ in range(9)]
    steps = []
    fast_step = LogitsGenerationBatch._step

    def counted(self: LogitsGenerationBatch) -> tuple[list[int], list[Any]]:
        steps.append(len(self.uids))
        return fast_step(self)

    monkeypatch.setattr(LogitsGenerationBatch, "_step", counted)
    ours = _generate(model, FastBatchGenerator, prompts)
    assert steps, "FastBatchGenerator decoded without LogitsGenerationBatch._step"
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


def test_batch_generator_has_the_shape_the_schedule_relies_on() -> None:
    """FastBatchGenerator._next replaces mlx-lm's schedule but reads its queue and prompt
    batch: what it relies on, said where a new mlx-lm would move it."""
    assert "self._next()" in _source(BatchGenerator.next), (
        "BatchGenerator.next no longer runs through _next (FastBatchGenerator._next)"
    )
    assert "self._next()" in _source(BatchGenerator.next_generated)
    remove = list(inspect.signature(BatchGenerator.remove).parameters)
    assert remove == ["self", "uids", "return_prompt_caches"], f"remove now takes {remove}"
    assert "self._next_logprobs.extend(batch._next_logprobs)" in _source(GenerationBatch.extend)
    make = _source(BatchGenerator._make_batch)
    assert "self._currently_processing.append(" in make, (
        "mlx-lm's _make_batch no longer records [segments, done, total] per prompt"
    )
    assert "[sequence[1], 0, sum(len(s) for s in sequence[1])]" in make
    insert = _source(BatchGenerator.insert_segments)
    assert "seq.append(seq[-1][-1:])" in insert, (
        "mlx-lm's insert no longer keeps a prompt's last token as its own segment "
        "(FastBatchGenerator._start_decoding waits for exactly that)"
    )
    for name in ("prompt", "split", "empty", "extend"):
        assert hasattr(PromptProcessingBatch, name), f"PromptProcessingBatch lost {name}"


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
    while generator._generation_batch.live < rows:
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
    batch = generator._generation_batch
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
    while generator._generation_batch.live < 4:
        generator.next()
    batch = generator._generation_batch
    generator.insert([[8, 9, 10, 11]], max_tokens=[4], samplers=[greedy])  # keeps rows retired
    generator.remove(uids[1:2])
    assert batch.retired == 1 and batch.samplers[batch.uids.index(RETIRED)] is greedy
    generator.remove([uids[2], uids[3]])  # only the seeded row is live: the fallback
    retired = [s for s, u in zip(batch.samplers, batch.uids, strict=True) if u == RETIRED]
    assert len(retired) == 3 and seeded not in retired
