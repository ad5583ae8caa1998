"""A decode step of a model split over mx.distributed ranks, without the server: the ceiling of
`distributed` specs. One process, or each rank under mlx.launch:

    python benchmarks/sharded_steps.py /tmp/bench-30m
    mlx.launch --backend ring -n 2 --python .venv/bin/python \
        benchmarks/sharded_steps.py /tmp/bench-30m

Rank 0 prints ms per decode step at each batch size, tensor parallel (mlx-lm's `shard`)."""

from __future__ import annotations

import argparse
import os
import time

from mlxdeploy.engine.weights.blas import load_fast_blas

STEPS = 30
PROMPT_TOKENS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model directory (config.json and safetensors)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    load_fast_blas()
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.utils import load

    group = mx.distributed.init()
    model = load(args.model, lazy=True)[0]
    if group.size() > 1:
        model.shard(group)
    mx.eval(model.parameters())
    for batch in args.batch:
        cache = make_prompt_cache(model)
        mx.eval(model(mx.zeros((batch, PROMPT_TOKENS), dtype=mx.uint32), cache=cache))
        token = mx.zeros((batch, 1), dtype=mx.uint32)
        for _ in range(5):
            mx.eval(model(token, cache=cache))
        started = time.perf_counter()
        for _ in range(STEPS):
            mx.eval(model(token, cache=cache))
        ms = (time.perf_counter() - started) / STEPS * 1000
        if group.rank() == 0:
            threads = os.environ.get("OPENBLAS_NUM_THREADS", "all")
            print(f"ranks {group.size()} batch {batch}: {ms:.1f} ms/step (BLAS threads: {threads})")


if __name__ == "__main__":
    main()
