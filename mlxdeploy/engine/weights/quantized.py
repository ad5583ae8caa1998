"""Quantized layers on the CPU: a matmul of more than one row dequantizes the weight first.

MLX's CPU quantized matmul costs about one matrix-vector product per input row: 0.8 ms per row
for a 1536x576 4-bit layer, so a 96-token prompt took 75 ms in that layer where dequantizing
the weight (1.7 ms) and one BLAS matmul (1 ms) take 2.5 ms. Prefill and batched decoding of a
quantized model paid that per row; single-row decoding keeps the quantized kernel, which is as
fast there. The weights stay packed in memory. Measurements: BENCHMARKS.md ("Quantized models
on the CPU").
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

DEQUANTIZE_FROM_ROWS = 2


def _rows(x: mx.array) -> int:
    return x.size // x.shape[-1] if x.ndim else 1


def _dequantized_matmul(layer: nn.Module, x: mx.array) -> mx.array:
    weight = mx.dequantize(
        layer["weight"],
        scales=layer["scales"],
        biases=layer.get("biases"),
        group_size=layer.group_size,
        bits=layer.bits,
        mode=layer.mode,
    )
    return (x.astype(mx.float32) @ weight.astype(mx.float32).T).astype(x.dtype)


class CPUQuantizedLinear(nn.QuantizedLinear):
    def __call__(self, x: mx.array) -> mx.array:
        if _rows(x) < DEQUANTIZE_FROM_ROWS:
            return super().__call__(x)
        y = _dequantized_matmul(self, x)
        return y + self["bias"] if "bias" in self else y


class CPUQuantizedEmbedding(nn.QuantizedEmbedding):
    def as_linear(self, x: mx.array) -> mx.array:
        """The tied output projection (the largest matmul of small models)."""
        if _rows(x) < DEQUANTIZE_FROM_ROWS:
            return super().as_linear(x)
        return _dequantized_matmul(self, x)


def use_cpu_quantized_matmul(model: nn.Module) -> int:
    """Give the model's quantized layers the CPU matmul above; returns how many."""
    swapped = 0
    for _, module in model.named_modules():
        # The same layer, parameters and all; only its matmul changes (the subclasses add no
        # state, so the instance can take the subclass as its class).
        if type(module) is nn.QuantizedLinear:
            module.__class__ = CPUQuantizedLinear
            swapped += 1
        elif type(module) is nn.QuantizedEmbedding:
            module.__class__ = CPUQuantizedEmbedding
            swapped += 1
    return swapped
