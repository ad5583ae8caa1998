"""The CPU fast paths against mlx-lm's own: same numbers (to float32 rounding).

The fast batch step against mlx-lm's (same tokens) is in test_batch.py."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.utils import load

from mlxdeploy.engine.sampling import SamplerCache, greedy
from mlxdeploy.engine.weights.kernels import SATURATION, swiglu, use_fast_kernels


def test_swiglu_matches_silu() -> None:
    gate = mx.concatenate([mx.random.normal((4096,)) * 8, mx.array([-1e4, -40.0, 0.0, 40.0])])
    x = mx.random.normal(gate.shape)
    ours, ref = swiglu(gate, x), nn.silu(gate) * x
    # Beyond the saturation point silu(g) is g * e^-30 instead of ~0: |g| * 1e-13 at most.
    assert mx.allclose(ours, ref, rtol=2e-5, atol=1e4 * float(mx.exp(mx.array(-SATURATION))) * 4)


def test_fast_kernels_keep_the_logits(tiny_model_dir: Path) -> None:
    model, _ = load(str(tiny_model_dir))[:2]
    tokens = mx.array([[1, 200, 3000, 40000, 5, 6, 7, 8]])
    ref = model(tokens)
    assert use_fast_kernels(model) == 2  # both MLPs of the two-layer model
    assert mx.allclose(model(tokens), ref, rtol=1e-4, atol=1e-5)


def test_samplers_are_shared_and_take_raw_logits() -> None:
    cache = SamplerCache()
    assert cache.sampler(0.0, 1.0) is cache.sampler(0.0, 1.0) is greedy
    assert cache.sampler(0.7, 0.9) is cache.sampler(0.7, 0.9)
    logits = mx.array([[0.0, 5.0, 1.0], [9.0, 0.0, 0.0]]) + 1000.0  # unnormalized
    assert greedy(logits).tolist() == [1, 0]
    mx.random.seed(0)
    assert cache.sampler(1e-3, 0.5)(logits).tolist() == [1, 0]
    assert cache.processors(1.0, 20) == []
    assert len(cache.processors(1.3, 20)) == 1
