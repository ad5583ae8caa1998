"""One decode step's attention over a quantized cache, three ways, on this machine's backend:

    python benchmarks/quantized_attention.py

- full: `mx.fast.scaled_dot_product_attention` over full-precision keys and values;
- quantized: mlx-lm's `quantized_scaled_dot_product_attention` (what a model with
  `engine.kv_bits` runs: `mx.quantized_matmul` for the scores and for the values);
- dequantize + fused: the cache dequantized on read (a transient full-precision copy per
  layer) and the fused kernel, the alternative to the quantized path.
Shapes: `B` rows of one query each over `T` cached positions, 9 query heads over 3 KV heads
of 64 (SmolLM2-135M's attention), group size 64; float32 (the CPU's); median of 20 calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mlxdeploy.engine.weights.blas import load_fast_blas

print(load_fast_blas().describe())  # before MLX is imported: it picks the BLAS once

import mlx.core as mx  # noqa: E402
from mlx_lm.models.base import quantized_scaled_dot_product_attention  # noqa: E402

HEADS, KV_HEADS, HEAD, GROUP, SCALE = 9, 3, 64, 64, 0.125


def median_ms(call: Callable[[], mx.array], n: int = 20) -> float:
    for _ in range(3):
        mx.eval(call())
    times = []
    for _ in range(n):
        start = time.perf_counter()
        mx.eval(call())
        times.append(time.perf_counter() - start)
    return sorted(times)[n // 2] * 1000


def measure(rows: int, positions: int, bits: int) -> tuple[float, float, float]:
    q = mx.random.normal((rows, HEADS, 1, HEAD))
    k = mx.random.normal((rows, KV_HEADS, positions, HEAD))
    v = mx.random.normal((rows, KV_HEADS, positions, HEAD))
    mask = mx.ones((rows, 1, 1, positions), dtype=mx.bool_)
    qk = mx.quantize(k, group_size=GROUP, bits=bits)
    qv = mx.quantize(v, group_size=GROUP, bits=bits)
    mx.eval(q, k, v, mask, qk, qv)

    def dequantized() -> mx.array:
        keys = mx.dequantize(*qk, group_size=GROUP, bits=bits)
        values = mx.dequantize(*qv, group_size=GROUP, bits=bits)
        return mx.fast.scaled_dot_product_attention(q, keys, values, scale=SCALE, mask=mask)

    full = median_ms(lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=SCALE, mask=mask))
    quantized = median_ms(
        lambda: quantized_scaled_dot_product_attention(q, qk, qv, SCALE, mask, GROUP, bits)
    )
    return full, quantized, median_ms(dequantized)


def main() -> None:
    for rows, positions in [(1, 1024), (8, 1024), (8, 4096), (32, 1024)]:
        for bits in (4, 8):
            full, quantized, dequantized = measure(rows, positions, bits)
            print(
                f"B={rows} T={positions} {bits}-bit: full {full:.2f} ms, quantized "
                f"{quantized:.2f} ms ({quantized / full:.1f}x), dequantize + fused "
                f"{dequantized:.2f} ms ({dequantized / full:.1f}x)"
            )


if __name__ == "__main__":
    main()
