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
from mlx_lm.generate import BatchGenerator, GenerationBatch
from mlx_lm.utils import load
from packaging.requirements import Requirement

from mlxdeploy.engine.batch import FastBatchGenerator, LogitsGenerationBatch
from mlxdeploy.engine.sampling import greedy

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
    generator = generator_cls(model, completion_batch_size=8, prefill_batch_size=8)
    n = len(prompts)
    uids = generator.insert(prompts, max_tokens=[MAX_TOKENS] * n, samplers=[greedy] * n)
    out: dict[int, list[int]] = {uid: [] for uid in uids}
    while any(len(tokens) < MAX_TOKENS for tokens in out.values()):
        for response in generator.next_generated():
            out[response.uid].append(response.token)
    return {uids.index(uid): tokens for uid, tokens in out.items()}


def test_fast_batch_generates_the_same_tokens_as_mlx_lm(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 40000) for _ in range(rng.randrange(3, 40))] for _ in range(5)]
    steps = []
    fast_step = LogitsGenerationBatch._step

    def counted(self: LogitsGenerationBatch) -> tuple[list[int], list[Any]]:
        steps.append(len(self.uids))
        return fast_step(self)

    monkeypatch.setattr(LogitsGenerationBatch, "_step", counted)
    ours = _generate(model, FastBatchGenerator, prompts)
    assert steps, "FastBatchGenerator decoded without LogitsGenerationBatch._step"
    assert ours == _generate(model, BatchGenerator, prompts)


def test_batch_generator_has_the_shape_the_logprobs_rows_rely_on() -> None:
    """FastBatchGenerator forgets a request's logprobs row in `_next` and `remove`, and the
    first token's row comes from mlx-lm's own step (its whole normalized logprobs)."""
    assert "self._next()" in _source(BatchGenerator.next), (
        "BatchGenerator.next no longer runs through _next (FastBatchGenerator._next)"
    )
    assert "self._next()" in _source(BatchGenerator.next_generated)
    remove = list(inspect.signature(BatchGenerator.remove).parameters)
    assert remove == ["self", "uids", "return_prompt_caches"], f"remove now takes {remove}"
    assert "self._next_logprobs.extend(batch._next_logprobs)" in _source(GenerationBatch.extend)
    assert "self._next_logprobs = list(logprobs)" in _source(GenerationBatch._step), (
        "mlx-lm's first step no longer leaves whole logprobs rows (LogitsGenerationBatch."
        "_first_scores reduces them)"
    )
