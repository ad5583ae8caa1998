"""The embedding thread on real MLX: how it batches the inputs that wait (bounded by rows and
padded tokens), long inputs read in chunks, cancelled requests, and the headless checkpoints
embedding models ship (Qwen3-Embedding's layout), against mlx-lm's own forward pass."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.utils import load

from mlxdeploy.engine.api import EmbeddingFailed, Embeddings
from mlxdeploy.engine.embedding import embedder as embedder_module
from mlxdeploy.engine.embedding.batches import batch_rows
from mlxdeploy.engine.embedding.checkpoints import embedding_classes
from mlxdeploy.engine.embedding.embedder import Embedder, EmbedJob
from mlxdeploy.engine.embedding.forward import backbone_path
from mlxdeploy.engine.weights.loader import load_model
from mlxdeploy.spec.settings import EngineSettings
from mlxdeploy.spec.sources import parse_model_source
from tests.conftest import TINY_CONFIG, make_tiny_model


def unit_rows(states: Any) -> np.ndarray:
    values = np.asarray(states, dtype=np.float64)
    return values / np.linalg.norm(values, axis=-1, keepdims=True)


def forward(model: Any, tokens: Sequence[int]) -> np.ndarray:
    """One input alone through mlx-lm's transformer: its last hidden state, normalised."""
    return unit_rows(model.model(mx.array([list(tokens)]))[0, -1].astype(mx.float32))


def vector_of(result: Embeddings, index: int) -> np.ndarray:
    return np.frombuffer(result.vectors[index].float32, dtype="<f4").astype(np.float64)


@pytest.fixture(scope="module")
def mlx_lm_model(tiny_model_dir: Path) -> Any:
    return load(str(tiny_model_dir))[0]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> Any:
    """The tiny llama as an embedding model loads it (the loader's own path)."""
    source = parse_model_source(str(tiny_model_dir), tiny_model_dir)
    return load_model(source, classes=embedding_classes)[0]


class Passes:
    """Records the rows of every forward pass the embedding thread makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows: list[list[int]] = []  # per pass: each row's token count
        original = embedder_module.last_states

        def counted(model: Any, body: Any, rows: Sequence[Sequence[int]], chunk: int) -> Any:
            self.rows.append([len(row) for row in rows])
            return original(model, body, rows, chunk)

        monkeypatch.setattr(embedder_module, "last_states", counted)


def run_jobs(embedder: Embedder, inputs: list[list[list[int]]]) -> list[Any]:
    """Submit every request before the thread starts, so that they wait together; the
    results in request order."""
    results: list[Any] = [None] * len(inputs)
    done = threading.Semaphore(0)

    def settle_as(index: int) -> Any:
        def settle(result: Any) -> None:
            results[index] = result
            done.release()

        return settle

    jobs = [EmbedJob(rows, embedder.size, f"r{i}", settle_as(i)) for i, rows in enumerate(inputs)]
    for job in jobs:
        embedder.submit(job)
    with running(embedder):
        for _ in jobs:
            assert done.acquire(timeout=60)
    return results


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> Passes:
    return Passes(monkeypatch)


class running:  # noqa: N801 - a context manager read as a phrase
    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.thread = threading.Thread(target=embedder.run, daemon=True)

    def __enter__(self) -> None:
        self.thread.start()

    def __exit__(self, *exc: object) -> None:
        self.embedder.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


# -- planning ------------------------------------------------------------------------------


def test_a_batch_is_the_oldest_inputs_that_fit_rows_and_padded_tokens() -> None:
    assert batch_rows([], 8, 100) == 0
    assert batch_rows([10, 10, 10], 8, 100) == 3
    assert batch_rows([10] * 20, 8, 1000) == 8  # rows bound
    assert batch_rows([10, 10, 40, 10], 8, 100) == 2  # 3 rows would pad to 3 x 40 = 120
    assert batch_rows([30, 10, 10], 8, 90) == 3  # 3 x 30 = 90 fits exactly
    assert batch_rows([500, 1], 8, 100) == 1  # the oldest goes alone, however long


# -- batches on real MLX ---------------------------------------------------------------------


def test_waiting_requests_share_a_forward_pass_and_match_each_alone(
    loaded: Any, mlx_lm_model: Any, passes: Passes
) -> None:
    embedder = Embedder(loaded, EngineSettings(max_batch_size=8, embed_batch_tokens=4096))
    requests = [[[1, 2, 3, 4, 5, 6, 7]], [[9, 8], [30, 31, 32, 33]], [[100, 200, 300]]]
    passes.rows.clear()
    results = run_jobs(embedder, requests)
    assert passes.rows == [[7, 2, 4, 3]]  # one pass, the requests' inputs in order
    for result, rows in zip(results, requests, strict=True):
        assert isinstance(result, Embeddings)
        assert result.prompt_tokens == sum(len(row) for row in rows)
        for index, tokens in enumerate(rows):
            np.testing.assert_allclose(
                vector_of(result, index), forward(mlx_lm_model, tokens), atol=2e-6
            )


def test_batches_are_bounded_by_rows_and_by_padded_tokens(loaded: Any, passes: Passes) -> None:
    settings = EngineSettings(max_batch_size=2, embed_batch_tokens=64)
    embedder = Embedder(loaded, settings)
    passes.rows.clear()
    run_jobs(embedder, [[[1] * 5, [2] * 5, [3] * 5], [[4] * 40, [5] * 20], [[6] * 100]])
    assert passes.rows == [[5, 5], [5], [40], [20], [100]]
    assert all(len(r) * max(r) <= 64 or len(r) == 1 for r in passes.rows)


def test_long_inputs_are_read_in_chunks_to_the_same_vectors(loaded: Any, mlx_lm_model: Any) -> None:
    settings = EngineSettings(prefill_step_size=16, embed_batch_tokens=4096)
    embedder = Embedder(loaded, settings)
    rows = [list(range(1, 41)), list(range(50, 67)), [7, 8, 9]]  # 40, 17 and 3 tokens
    [result] = run_jobs(embedder, [rows])
    for index, tokens in enumerate(rows):
        np.testing.assert_allclose(
            vector_of(result, index), forward(mlx_lm_model, tokens), atol=1e-5
        )


def test_a_cancelled_request_is_skipped(loaded: Any, passes: Passes) -> None:
    embedder = Embedder(loaded, EngineSettings(max_batch_size=1))
    settled: list[Any] = []
    gone = EmbedJob([[1, 2], [3, 4]], embedder.size, "gone", settled.append)
    embedder.submit(gone)
    gone.cancelled = True
    passes.rows.clear()
    results = run_jobs(embedder, [[[5, 6, 7]]])
    assert isinstance(results[0], Embeddings) and passes.rows == [[3]]
    assert settled == [] and embedder.active == 0 and embedder.requests() == []


def test_a_failed_pass_fails_its_requests_and_the_thread_goes_on(
    loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder = Embedder(loaded, EngineSettings(max_batch_size=1))
    original = embedder_module.last_states

    def failing(model: Any, body: Any, rows: Sequence[Sequence[int]], chunk: int) -> Any:
        if rows[0][0] == 13:
            raise RuntimeError("out of memory")
        return original(model, body, rows, chunk)

    monkeypatch.setattr(embedder_module, "last_states", failing)
    failed, fine = run_jobs(embedder, [[[13, 1]], [[2, 3]]])
    assert isinstance(failed, EmbeddingFailed) and "out of memory" in str(failed)
    assert isinstance(fine, Embeddings)
    assert embedder.stats().step_failures == 1


def test_stop_fails_what_waits(loaded: Any) -> None:
    embedder = Embedder(loaded, EngineSettings())
    settled: list[Any] = []
    embedder.submit(EmbedJob([[1, 2]], embedder.size, "late", settled.append))
    embedder.stop()
    embedder.run()  # returns at once: stopped
    assert len(settled) == 1 and isinstance(settled[0], EmbeddingFailed)
    with pytest.raises(EmbeddingFailed, match="stopped serving"):
        embedder.submit(EmbedJob([[1]], embedder.size, "after", settled.append))


# -- checkpoints -------------------------------------------------------------------------------

QWEN3 = {
    **{k: v for k, v in TINY_CONFIG.items() if k != "model_type"},
    "model_type": "qwen3",
    "head_dim": 16,
    "tie_word_embeddings": False,  # as Qwen3-Embedding-8B's config, which ships no head
    "architectures": ["Qwen3Model"],
}


@pytest.fixture(scope="module")
def headless_dir(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny Qwen3 saved as Qwen3-Embedding is: the transformer's weights without the
    `model.` prefix, and no lm_head although the config does not tie it."""
    out = make_tiny_model(tmp_path_factory.mktemp("qwen3-embedding"), demo_dir, 3, QWEN3)
    weights = mx.load(str(out / "model.safetensors"))
    flat = {k.removeprefix("model."): v for k, v in weights.items() if not k.startswith("lm_")}
    assert "embed_tokens.weight" in flat and not any(k.startswith("lm_head") for k in flat)
    mx.save_safetensors(str(out / "model.safetensors"), flat)
    yield out


def test_a_headless_checkpoint_loads_and_embeds_as_its_transformer(headless_dir: Path) -> None:
    source = parse_model_source(str(headless_dir), headless_dir)
    model, tokenizer = load_model(source, classes=embedding_classes)
    assert backbone_path(model) == ("model",) and "lm_head" not in model
    # The reference: mlx-lm's own Qwen3 transformer with the checkpoint's weights.
    from mlx_lm.models import qwen3

    reference = qwen3.Qwen3Model(qwen3.ModelArgs.from_dict(QWEN3))
    reference.load_weights(list(mx.load(str(headless_dir / "model.safetensors")).items()))
    tokens = tokenizer.encode("A headless checkpoint")
    expected = unit_rows(reference(mx.array([tokens]))[0, -1].astype(mx.float32))
    [result] = run_jobs(Embedder(model, EngineSettings()), [[tokens]])
    np.testing.assert_allclose(vector_of(result, 0), expected, atol=2e-6)


def test_a_checkpoint_with_its_prefix_and_head_loads_unchanged(
    tiny_model_dir: Path, loaded: Any, mlx_lm_model: Any
) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["tie_word_embeddings"]  # no head module: nothing to drop
    ours = dict(tree_flatten(loaded.parameters()))
    theirs = dict(tree_flatten(mlx_lm_model.parameters()))
    assert ours.keys() == theirs.keys()
    assert all(mx.array_equal(ours[name], theirs[name]).item() for name in ours)


def test_a_model_with_no_transformer_to_find_is_refused() -> None:
    import mlx.nn as nn

    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Linear(2, 2)

    with pytest.raises(ValueError, match="keeps no transformer under model, transformer"):
        backbone_path(Odd())
