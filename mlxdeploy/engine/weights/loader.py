"""Model loading: HF repo id, local HF-style dir, or GGUF file -> (model, tokenizer)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from ...spec.sources import ModelSource
from .kernels import use_fast_kernels
from .quantized import use_cpu_quantized_matmul

log = logging.getLogger("mlxdeploy.engine")


class ModelLoadError(Exception):
    """A model could not be made available; the message is one actionable line."""


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("MLXDEPLOY_CACHE_DIR") or Path(base) / "mlxdeploy")


def resolve_model_dir(source: ModelSource, cache_root: Path) -> Path:
    if source.kind == "hf" or source.path is None:
        return download_repo(str(source.repo))
    if source.kind == "gguf":
        from .gguf import GGUFError, convert_gguf

        try:
            return convert_gguf(source.path, cache_root / "gguf")
        except GGUFError as exc:
            raise ModelLoadError(str(exc)) from None
    return source.path


def download_repo(repo: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = [
        "*.json",
        "*.safetensors",
        "*.py",
        "tokenizer.model",
        "*.tiktoken",
        "*.txt",
        "*.jinja",
    ]
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
    except Exception:
        log.info("model %s is not in the Hugging Face cache; downloading it", repo)
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as exc:
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0].split(". ")[0]
        raise ModelLoadError(
            f"model '{repo}' is not in the Hugging Face cache and could not be downloaded "
            f"({reason}); download it where the Hub is reachable (`hf download {repo}`) and copy "
            f"the cache (HF_HOME), or set `model:` to a local directory or .gguf file"
        ) from None


def load_model(source: ModelSource, cache_root: Path | None = None) -> tuple[nn.Module, Any]:
    from mlx_lm.utils import load

    model_dir = resolve_model_dir(source, cache_root or default_cache_root())
    try:
        model, tokenizer = load(str(model_dir))[:2]
    except Exception as exc:
        raise ModelLoadError(f"cannot load model from {model_dir}: {exc}") from None
    if mx.default_device() == mx.cpu:
        cast_floats(model, mx.float32)
        swiglu = use_fast_kernels(model)
        quantized = use_cpu_quantized_matmul(model)
        log.info(
            "CPU: float32 activations; %d quantized layers (dequantized for multi-row matmuls), "
            "fast SwiGLU in %d float32 MLPs",
            quantized,
            swiglu,
        )
    return model, tokenizer


def cast_floats(model: nn.Module, dtype: mx.Dtype) -> None:
    """Half precision on a CPU is orders of magnitude slower than float32 there."""

    def cast(a: mx.array) -> mx.array:
        return a.astype(dtype) if mx.issubdtype(a.dtype, mx.floating) else a

    model.update(tree_map(cast, model.parameters()))
    mx.eval(model.parameters())
