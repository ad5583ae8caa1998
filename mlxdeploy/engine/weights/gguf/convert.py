"""`convert_gguf`: one conversion per file and layout, cached under a root and published by an
atomic rename, so a crash leaves no half-written cache entry.

CPU keeps the weights packed (DEFAULT_CPU_DEQUANTIZE), by the measurement in the package
docstring.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx

from ..progress import LogProgress, Progress, Silent, Step, size
from .config import model_config
from .header import GGUFError, GGUFHeader, check_supported, read_header
from .tensors import Layout, convert_weights, load_tensors, quantization_config, save_weights
from .tokenizer import save_tokenizer

# Bump when the output of a conversion changes, so old cache entries are not reused.
CONVERTER_VERSION = 1
# Chosen by measurement, see the package docstring.
DEFAULT_CPU_DEQUANTIZE = False


def default_layout() -> Layout:
    """float32 on CPU (float16 is very slow there); packed float16 elsewhere."""
    if mx.default_device() == mx.cpu:
        return Layout(dequantize=DEFAULT_CPU_DEQUANTIZE, dtype="float32")
    return Layout(dequantize=False, dtype="float16")


def convert_gguf(
    path: Path,
    cache_root: Path,
    *,
    dequantize: bool | None = None,
    dtype: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Convert a llama-architecture GGUF file once into an HF-style model dir under cache_root.

    The dir holds config.json, model safetensors, tokenizer.json, tokenizer_config.json and
    special_tokens_map.json, and loads with `mlx_lm.utils.load(dir)`. An existing conversion is
    reused when the file's resolved path, size and mtime, the converter version and the layout
    match. Writes go to a temp dir that is renamed into place, so a crash leaves no half cache.
    """
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise GGUFError(f"{path}: no such file")
    layout = _resolve_layout(dequantize, dtype)
    target = Path(cache_root) / cache_name(source, layout)
    if (target / "config.json").is_file():
        return target
    header = read_header(source)
    check_supported(source, header)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    label = f"converting {source.name}"
    try:
        with (progress or LogProgress()).step(label, len(header.tensors), "tensors") as step:
            write_model_dir(source, header, layout, staging, step)
            _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _resolve_layout(dequantize: bool | None, dtype: str | None) -> Layout:
    default = default_layout()
    if dtype is not None and dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, but is {dtype!r}")
    return Layout(
        dequantize=default.dequantize if dequantize is None else dequantize,
        dtype=dtype or default.dtype,
    )


def cache_name(source: Path, layout: Layout) -> str:
    """The cache dir name: the file stem plus a hash of what the conversion depends on."""
    stat = source.stat()
    key = json.dumps(
        [
            str(source),
            stat.st_size,
            stat.st_mtime_ns,
            CONVERTER_VERSION,
            layout.dequantize,
            layout.dtype,
        ]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{source.stem}-{digest}"


def _publish(staging: Path, target: Path) -> None:
    """Rename the finished dir into place; a concurrent converter that won the race is fine."""
    if target.exists() and not (target / "config.json").is_file():
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.rename(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise


def write_model_dir(
    source: Path, header: GGUFHeader, layout: Layout, out: Path, step: Step | None = None
) -> None:
    """Write config, weights and tokenizer of a checked GGUF file into `out`."""
    step = step or Silent()
    step.phase(f"reading the file ({size(source.stat().st_size)})")
    tensors = load_tensors(source, header)
    step.phase("converting the tensors")

    def converted(name: str) -> None:  # a quantized tensor is three arrays: count its weight
        if not name.endswith((".scales", ".biases")):
            step.advance(1)

    weights = convert_weights(tensors, header.metadata, layout, converted)
    del tensors
    config = model_config(header.metadata, weights, source)
    quantization = quantization_config(weights)
    if quantization:
        config["quantization"] = quantization
    step.phase("writing the converted model")
    save_weights(weights, out)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_tokenizer(source, header.metadata, out)
