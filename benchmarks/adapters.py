"""Throughput of mixed-adapter traffic against the base model alone, in-process.

    python benchmarks/adapters.py /tmp/bench-30m --adapters 2 --rank 16 --clients 8 32

Random LoRA adapters (mlx-lm's format) of the given rank on every linear layer of every
decoder layer are written to a temporary directory and attached to the model
(`engine/adapters.py`), with mlxdeploy's CPU kernels as the engine uses them. For each client
count it runs the engine's own loop (`SlotGenerator`) with that many sequences kept in flight,
each finished one replaced at once by a new random prompt (`--shape PROMPT TOKENS`, as
benchmarks/engine_steps.py `--churn`), and reports generated tokens per second for:

- base alone: the model with no adapters attached;
- base, adapters attached: every request on the base weights (what attaching costs them);
- one adapter: every request on the same adapter (plain matmuls for the deltas);
- mixed: requests spread evenly over the base model and every adapter, rows of all of them in
  each step (the deltas gathered per row with `mx.gather_mm`).

Also decode ms/step of a full batch for the same four. The cases run in interleaved rounds
(`--rounds`) and each number is its median, so that a busy machine's drift falls on all of
them alike. No HTTP: this isolates the engine.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlxdeploy.engine.weights.blas import load_fast_blas

ALL_LINEAR = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)  # fmt: skip
Choose = Callable[[int], int]  # request number -> adapter (0: the base weights)


def write_adapters(model: Any, out: Path, count: int, rank: int) -> list[Path]:
    import mlx.core as mx

    modules = dict(model.named_modules())
    paths = []
    for k in range(count):
        mx.random.seed(k)
        tensors = {}
        for i in range(len(model.layers)):
            for key in ALL_LINEAR:
                name = f"model.layers.{i}.{key}"
                out_dims, in_dims = modules[name].weight.shape
                tensors[f"{name}.lora_a"] = mx.random.normal((in_dims, rank)) * in_dims**-0.5
                tensors[f"{name}.lora_b"] = mx.random.normal((rank, out_dims)) * 0.01
        path = out / f"adapter-{k}"
        path.mkdir()
        mx.save_safetensors(str(path / "adapters.safetensors"), tensors)
        params = {"rank": rank, "scale": 10.0, "dropout": 0.0, "keys": list(ALL_LINEAR)}
        config = {"fine_tune_type": "lora", "num_layers": -1, "lora_parameters": params}
        (path / "adapter_config.json").write_text(json.dumps(config))
        paths.append(path)
    return paths


def load_served(model_dir: str, adapters: list[Path]) -> Any:
    """The model as the engine serves it on a CPU: mlxdeploy's kernels, then the adapters."""
    from mlx_lm.utils import load

    from mlxdeploy.engine.adapters import attach
    from mlxdeploy.engine.weights.kernels import use_fast_kernels
    from mlxdeploy.engine.weights.quantized import use_cpu_quantized_matmul

    model = load(model_dir)[0]
    use_fast_kernels(model)
    use_cpu_quantized_matmul(model)
    if adapters:
        attach(model, [(path.name, path) for path in adapters])
    return model


def churn_tok_s(model: Any, clients: int, prompt: int, tokens: int, choose: Choose) -> float:
    """Tokens per second with `clients` sequences kept in flight, over the second and third
    generations of requests (the first warms every shape)."""
    from mlxdeploy.engine.generator import SlotGenerator
    from mlxdeploy.engine.sampling import greedy

    rng = random.Random(clients)
    gen = SlotGenerator(
        model, completion_batch_size=clients, prefill_batch_size=8, prefill_step_size=512,
        prefill_wait_steps=4,
    )  # fmt: skip
    issued = 0

    def add(n: int) -> None:
        nonlocal issued
        prompts = [[rng.randrange(1000, 40000) for _ in range(prompt)] for _ in range(n)]
        adapters = [choose(issued + i) for i in range(n)]
        issued += n
        gen.insert(prompts, max_tokens=[tokens] * n, samplers=[greedy] * n, adapters=adapters)

    add(clients)
    finished = generated = 0
    start = 0.0
    while finished < 3 * clients:
        if finished >= clients and not start:
            start, generated = time.perf_counter(), 0
        responses = gen.next()[1]
        generated += len(responses)
        done = sum(r.finish_reason is not None for r in responses)
        finished += done
        if done:
            add(done)
    gen.close()
    return generated / (time.perf_counter() - start)


def decode_ms(model: Any, batch: int, choose: Choose) -> float:
    from mlxdeploy.engine.generator import SlotGenerator
    from mlxdeploy.engine.sampling import greedy

    rng = random.Random(0)
    prompts = [[rng.randrange(1000, 40000) for _ in range(64)] for _ in range(batch)]
    gen = SlotGenerator(model, completion_batch_size=batch, prefill_batch_size=batch)
    adapters = [choose(i) for i in range(batch)]
    gen.insert(prompts, max_tokens=[100_000] * batch, samplers=[greedy] * batch, adapters=adapters)
    while gen.running < batch:
        gen.next()
    for _ in range(3):
        gen.next()
    start, steps = time.perf_counter(), 20
    for _ in range(steps):
        gen.next()
    gen.close()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a local mlx-lm model dir")
    parser.add_argument("--adapters", type=int, default=2, help="adapters in the mix")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per case")
    parser.add_argument(
        "--shape", type=int, nargs=2, default=[190, 64], metavar=("PROMPT", "TOKENS")
    )
    args = parser.parse_args()
    print(load_fast_blas().describe())
    base = load_served(args.model, [])
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_adapters(base, Path(tmp), args.adapters, args.rank)
        served = load_served(args.model, paths)
    n = args.adapters
    cases: list[tuple[str, Any, Choose]] = [
        ("base alone", base, lambda i: 0),
        ("base, adapters attached", served, lambda i: 0),
        ("one adapter", served, lambda i: 1),
        (f"mixed: base and {n} adapters", served, lambda i: i % (n + 1)),
    ]
    prompt, tokens = args.shape
    print(f"{n} adapters of rank {args.rank} on all {len(ALL_LINEAR)} linear layers per layer")
    for clients in args.clients:
        rates: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        for _ in range(args.rounds):
            for name, model, choose in cases:
                rates[name].append(churn_tok_s(model, clients, prompt, tokens, choose))
                times[name].append(decode_ms(model, clients, choose))
        shown = ", ".join(f"{name} {statistics.median(r):.1f}" for name, r in rates.items())
        print(f"churn, {clients} in flight, {prompt}-token prompts, {tokens} tokens: {shown} tok/s")
        shown = ", ".join(f"{name} {statistics.median(t):.1f}" for name, t in times.items())
        print(f"decode, {clients} sequences: {shown} ms/step")


if __name__ == "__main__":
    main()
