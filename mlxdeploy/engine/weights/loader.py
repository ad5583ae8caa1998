"""Model loading: HF repo id, local HF-style dir, or GGUF file -> (model, tokenizer)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

from ...spec.sources import ModelSource
from .downloads import download_bars
from .kernels import use_fast_kernels
from .progress import LogProgress, Progress
from .quantized import use_cpu_quantized_matmul
from .summary import describe, parameters, summarize

log = logging.getLogger("mlxdeploy.engine")


TRANSFORMERS_TOKENIZER_LOGGER = "transformers.tokenization_utils_base"


class ModelLoadError(Exception):
    """A model could not be made available; the message is one actionable line."""


class LengthWarningFilter(logging.Filter):
    """Drops transformers' "Token indices sequence length is longer than the specified
    maximum sequence length" warning: the API checks every prompt against the model's context
    itself and answers a prompt that does not fit with a 400 that says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token indices sequence length is longer")


def quiet_length_warning() -> None:
    logger = logging.getLogger(TRANSFORMERS_TOKENIZER_LOGGER)
    if not any(isinstance(f, LengthWarningFilter) for f in logger.filters):
        logger.addFilter(LengthWarningFilter())


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("MLXDEPLOY_CACHE_DIR") or Path(base) / "mlxdeploy")


def resolve_model_dir(
    source: ModelSource, cache_root: Path, progress: Progress | None = None
) -> Path:
    progress = progress or LogProgress()
    if source.kind == "hf" or source.path is None:
        return download_repo(str(source.repo), progress)
    if source.kind == "gguf":
        from .gguf import GGUFError, convert_gguf

        try:
            return convert_gguf(source.path, cache_root / "gguf", progress=progress)
        except GGUFError as exc:
            raise ModelLoadError(str(exc)) from None
    return source.path


def download_repo(repo: str, progress: Progress | None = None) -> Path:
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
        with (progress or LogProgress()).step(f"downloading {repo}", None, "bytes") as step:
            bars = download_bars(step)
            return Path(snapshot_download(repo, allow_patterns=patterns, tqdm_class=bars))
    except Exception as exc:
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0].split(". ")[0]
        raise ModelLoadError(
            f"model '{repo}' is not in the Hugging Face cache and could not be downloaded "
            f"({reason}); download it where the Hub is reachable (`hf download {repo}`) and copy "
            f"the cache (HF_HOME), or set `model:` to a local directory or .gguf file"
        ) from None


ModelClasses = Callable[[dict[str, Any]], tuple[type[nn.Module], type[Any]]]


def load_model(
    source: ModelSource,
    cache_root: Path | None = None,
    progress: Progress | None = None,
    shard: Callable[[nn.Module], None] | None = None,
    classes: ModelClasses | None = None,
) -> tuple[nn.Module, Any]:
    """`shard`: splits the lazily loaded model (a distributed model's rank), so that only its
    own part of the weights is read. `classes`: the model classes for a config, in place of
    mlx-lm's own choice (an embedding model's take headless checkpoints)."""
    progress = progress or LogProgress()
    quiet_length_warning()
    model_dir = resolve_model_dir(source, cache_root or default_cache_root(), progress)
    try:
        model, tokenizer = _load(model_dir, classes)
        if shard is not None:
            shard(model)
        summary = summarize(model)
        cpu = mx.default_device() == mx.cpu
        if cpu:  # folded into the reading: the half-precision copy is never kept
            cast_floats(model, mx.float32)
        read_weights(model, progress, f"loading {_short_name(source)}")
    except Exception as exc:
        raise ModelLoadError(f"cannot load model from {model_dir}: {exc}") from None
    swiglu = 0
    if cpu:
        swiglu = use_fast_kernels(model)
        use_cpu_quantized_matmul(model)
    log.info("%s", describe(summary, "float32" if cpu else None, cpu, swiglu))
    return model, tokenizer


def _load(model_dir: Path, classes: ModelClasses | None) -> tuple[nn.Module, Any]:
    """The lazily loaded model and its tokenizer, as `mlx_lm.utils.load` makes them."""
    from mlx_lm.utils import load, load_tokenizer
    from mlx_lm.utils import load_model as load_mlx_lm_model

    if classes is None:
        model, tokenizer = load(str(model_dir), lazy=True)[:2]
        return model, tokenizer
    model, config = load_mlx_lm_model(model_dir, lazy=True, get_model_classes=classes)
    return model, load_tokenizer(model_dir, eos_token_ids=config.get("eos_token_id"))


def read_weights(model: nn.Module, progress: Progress, label: str) -> None:
    """Evaluate the lazily loaded parameters one array at a time, reporting the bytes read."""
    arrays = parameters(model)
    with progress.step(label, sum(a.nbytes for a in arrays), "bytes") as step:
        for array in arrays:
            mx.eval(array)
            step.advance(array.nbytes)


def cast_floats(model: nn.Module, dtype: mx.Dtype) -> None:
    """Half precision on a CPU is orders of magnitude slower than float32 there. Lazy: the
    cast happens when the parameters are evaluated."""

    def cast(a: mx.array) -> mx.array:
        return a.astype(dtype) if mx.issubdtype(a.dtype, mx.floating) else a

    model.update(tree_map(cast, model.parameters()))


def _short_name(source: ModelSource) -> str:
    return source.path.name if source.path is not None else str(source)
