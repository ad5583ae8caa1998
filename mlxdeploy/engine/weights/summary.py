"""What a loaded model's weights are, in one log line: which matrices are quantized (and stay
packed in memory) at how many bits, which are floating point, and in which float dtype."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten


@dataclass(frozen=True)
class WeightSummary:
    quantized: tuple[tuple[int, int], ...]  # (bits, matrices), fewest bits first
    float_matrices: int
    float_dtypes: tuple[str, ...]  # of every floating-point parameter, as loaded

    @property
    def quantized_matrices(self) -> int:
        return sum(count for _, count in self.quantized)


def summarize(model: nn.Module) -> WeightSummary:
    """Reads dtypes and module types only: works on weights that are not loaded yet."""
    bits: Counter[int] = Counter()
    floats = 0
    for _, module in model.named_modules():
        if "scales" in module and hasattr(module, "bits"):  # QuantizedLinear, -Embedding, ...
            bits[int(module.bits)] += 1
        elif "weight" in module and module["weight"].ndim >= 2:
            floats += 1
    dtypes = {
        _dtype_name(a.dtype) for a in parameters(model) if mx.issubdtype(a.dtype, mx.floating)
    }
    return WeightSummary(tuple(sorted(bits.items())), floats, tuple(sorted(dtypes)))


def parameters(model: nn.Module) -> list[mx.array]:
    """Every parameter array of the model (loaded or not)."""
    flat: list[tuple[str, mx.array]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    return [array for _, array in flat]


def describe(summary: WeightSummary, float_dtype: str | None, cpu: bool, swiglu: int) -> str:
    """`float_dtype`: what the floats were cast to (None: kept as loaded); `swiglu`: MLPs that
    got the fast CPU SwiGLU."""
    loaded = "/".join(summary.float_dtypes) or "no floats"
    dtype = float_dtype or loaded
    cast = ""
    if float_dtype is not None and summary.float_dtypes not in ((), (float_dtype,)):
        cast = f" (cast from {loaded}: half precision is slow there)"
    parts = [
        f"weights on the {'CPU' if cpu else 'GPU'}: {_matrices(summary, cpu)}",
        f"{_floats(summary)} in {dtype}{cast}",
    ]
    if cpu:
        parts.append(f"fast SwiGLU in {swiglu} MLPs (float32 ones only)")
    return "; ".join(parts)


def _matrices(summary: WeightSummary, cpu: bool) -> str:
    total = summary.quantized_matrices + summary.float_matrices
    if not summary.quantized:
        return f"{total} matrices, none quantized"
    widths = ", ".join(f"{count} at {bits} bits" for bits, count in summary.quantized)
    note = "; multi-row matmuls dequantize them per call" if cpu else ""
    return (
        f"{total} matrices, {summary.quantized_matrices} quantized and kept packed "
        f"({widths}{note}), {summary.float_matrices} in floating point"
    )


def _floats(summary: WeightSummary) -> str:
    if not summary.quantized:
        return "every parameter"
    matrices = ", the float matrices" if summary.float_matrices else ""
    return f"norms, quantization scales and biases{matrices}"


def _dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).removeprefix("mlx.core.")
