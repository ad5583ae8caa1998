"""The CPU matmul of quantized layers: dequantized for more than one row, equal to MLX's
quantized kernel to float32 rounding, for linear layers and tied output projections."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from mlxdeploy.engine.weights.quantized import (
    CPUQuantizedEmbedding,
    CPUQuantizedLinear,
    use_cpu_quantized_matmul,
)


def quantized_model(bias: bool) -> nn.Module:
    mx.random.seed(0)
    model = nn.Sequential(nn.Embedding(96, 64), nn.Linear(64, 48, bias=bias))
    nn.quantize(model, group_size=32, bits=4)
    return model


@pytest.mark.parametrize("rows", [1, 2, 7])
@pytest.mark.parametrize("bias", [False, True])
def test_every_row_count_matches_the_quantized_kernel(rows: int, bias: bool) -> None:
    model = quantized_model(bias)
    embedding, linear = model.layers
    x = mx.random.normal((rows, 64))
    expected = linear(x), embedding.as_linear(x), embedding(mx.array([3, 5]))
    assert use_cpu_quantized_matmul(model) == 2
    assert type(linear) is CPUQuantizedLinear and type(embedding) is CPUQuantizedEmbedding
    got = linear(x), embedding.as_linear(x), embedding(mx.array([3, 5]))
    for want, have in zip(expected, got, strict=True):
        assert have.shape == want.shape and have.dtype == want.dtype
        assert mx.allclose(have, want, atol=1e-4, rtol=1e-4).item()


def test_the_layer_keeps_its_parameters() -> None:
    model = quantized_model(bias=True)
    before = dict(tree_flatten(model.parameters()))
    use_cpu_quantized_matmul(model)
    after = dict(tree_flatten(model.parameters()))
    assert before.keys() == after.keys()
    assert all(before[name] is after[name] for name in before)
