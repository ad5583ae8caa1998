"""The CPU matmul of quantized layers: dequantized for two rows or more, MLX's quantized
kernel for one, equal to that kernel to float32 rounding, for linear layers and tied output
projections."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxdeploy.engine.weights import quantized
from mlxdeploy.engine.weights.quantized import use_cpu_quantized_matmul


def quantized_model(bias: bool) -> nn.Module:
    mx.random.seed(0)
    model = nn.Sequential(nn.Embedding(96, 64), nn.Linear(64, 48, bias=bias))
    nn.quantize(model, group_size=32, bits=4)
    return model


@pytest.mark.parametrize("rows", [1, 2, 7])
@pytest.mark.parametrize("bias", [False, True])
def test_every_row_count_matches_the_quantized_kernel(
    rows: int, bias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = quantized_model(bias)
    embedding, linear = model.layers
    x = mx.random.normal((rows, 64))
    expected = linear(x), embedding.as_linear(x), embedding(mx.array([3, 5]))
    assert use_cpu_quantized_matmul(model) == 2
    dequantized = []
    matmul = quantized._dequantized_matmul
    monkeypatch.setattr(
        quantized, "_dequantized_matmul", lambda layer, x: dequantized.append(x) or matmul(layer, x)
    )
    got = linear(x), embedding.as_linear(x), embedding(mx.array([3, 5]))
    assert len(dequantized) == (2 if rows >= quantized.DEQUANTIZE_FROM_ROWS else 0)
    for want, have in zip(expected, got, strict=True):
        assert have.shape == want.shape and have.dtype == want.dtype
        assert mx.allclose(have, want, atol=1e-4, rtol=1e-4).item()


def test_a_batch_of_sequences_counts_its_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding 4 streams is a (4, 1, dims) input: four rows, so the dequantized path."""
    model = quantized_model(bias=False)
    use_cpu_quantized_matmul(model)
    seen = []
    matmul = quantized._dequantized_matmul
    monkeypatch.setattr(
        quantized, "_dequantized_matmul", lambda layer, x: seen.append(x.shape) or matmul(layer, x)
    )
    model.layers[1](mx.random.normal((4, 1, 64)))
    model.layers[1](mx.random.normal((1, 1, 64)))
    assert seen == [(4, 1, 64)]
