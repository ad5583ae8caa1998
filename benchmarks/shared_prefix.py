"""Time to first token when requests share a prefix, with the prefix cache and without, on a
plain-attention, a sliding-window and a hybrid (linear attention) model: the engine in-process
(no HTTP), greedy, one request at a time.

Two patterns, as a deployment meets them:
- `conversation`: a long prompt (system prompt and history) re-sent with new tokens after the
  answer, as the next turn of a chat;
- `system`: one system prompt shared by requests with different questions.

Each model is a random-weight mlx-lm model (its family's shape, scaled down) with SmolLM2's
tokenizer and chat template. For each pattern and model the table gives the prompt tokens of
the timed request, the tokens read from the prefix cache, and its time to first token with the
cache and without.

    python benchmarks/shared_prefix.py --long 10000 --new 200 --system 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from mlxdeploy.engine.api import Finished, SamplingParams, Text, Turn
from mlxdeploy.engine.engine import MLXEngine
from mlxdeploy.spec import load_spec

SHAPE = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "intermediate_size": 704,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {"rope_theta": 10000.0},
    "gemma3_text": {"sliding_window": 512, "sliding_window_pattern": 2,
                    "query_pre_attn_scalar": 64},
    "qwen3_5": {"linear_num_value_heads": 4, "linear_num_key_heads": 2,
                "linear_key_head_dim": 64, "linear_value_head_dim": 64,
                "linear_conv_kernel_dim": 4, "full_attention_interval": 2,
                "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
}  # fmt: skip
PARAMS = SamplingParams(
    max_tokens=4, temperature=0.0, top_p=1.0, repetition_penalty=1.0,
    repetition_context_size=20, stop=(),
)  # fmt: skip


def make_model(out: Path, family: str, tokenizer_dir: Path) -> Path:
    import importlib
    import shutil

    import mlx.core as mx
    from mlx.utils import tree_flatten

    config = {**SHAPE, **FAMILIES[family], "model_type": family}
    config["vocab_size"] = len(json.loads((tokenizer_dir / "tokenizer.json").read_text())
                               ["model"]["vocab"]) + 64  # fmt: skip
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    (out / "config.json").write_text(json.dumps(config))
    mx.random.seed(0)
    module = importlib.import_module(f"mlx_lm.models.{family}")
    model = module.Model(module.ModelArgs.from_dict(config))
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    return out


WORDS = (
    "the of and to in is that it for was on are as with his they at be this from have or "
    "by one had not but what all were when we there can an your which their said if do will "
    "each about how up out them then she many some so these would other into has more her two "
    "like him see time could no make than first been its who now people my made over did down"
).split()


def words(count: int, seed: int) -> str:
    """About `count` tokens of text (common words, a token each)."""
    return " ".join(WORDS[(i * 7919 + seed) % len(WORDS)] for i in range(count))


async def first_token(engine: MLXEngine, turns: list[Turn]) -> tuple[float, int, int]:
    """(seconds to the first text, prompt tokens, tokens read from the prefix cache)."""
    prompt = engine.prepare(turns, None)
    start, first = time.perf_counter(), None
    async for event in engine.generate(prompt, PARAMS):
        if isinstance(event, Text) and first is None:
            first = time.perf_counter() - start
        if isinstance(event, Finished):
            took = first if first is not None else time.perf_counter() - start
            return took, event.prompt_tokens, event.cached_tokens
    raise RuntimeError("the request did not finish")


async def pattern(engine: MLXEngine, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The pattern's warming request(s), then the timed one."""
    if name == "conversation":
        history = [Turn("system", words(args.long // 2, 1)), Turn("user", words(args.long // 2, 2))]
        await first_token(engine, history)
        timed = [*history, Turn("assistant", "Noted."), Turn("user", words(args.new, 3))]
    else:
        system = Turn("system", words(args.system, 4))
        await first_token(engine, [system, Turn("user", "What is the first word?")])
        timed = [system, Turn("user", "Which word comes most often, and how often?")]
    seconds, prompt, cached = await first_token(engine, timed)
    return {"ttft_s": round(seconds, 3), "prompt_tokens": prompt, "cached_tokens": cached}


async def run(model_dir: Path, cache_bytes: int, args: argparse.Namespace) -> dict[str, Any]:
    spec = Path(tempfile.mkdtemp()) / "s.yaml"
    engine_settings = {"warmup": False, "prompt_cache_bytes": cache_bytes}
    spec.write_text(json.dumps({"model": str(model_dir), "engine": engine_settings}))
    deployment = load_spec(spec)
    engine = MLXEngine(deployment.catalog.models[0])
    engine.start(asyncio.get_running_loop())
    assert await asyncio.to_thread(engine.wait_loaded, 600) == "ready", engine.error
    try:
        return {name: await pattern(engine, name, args) for name in ("conversation", "system")}
    finally:
        engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", type=int, default=10000, help="the conversation's tokens")
    parser.add_argument("--new", type=int, default=200, help="its next turn's new tokens")
    parser.add_argument("--system", type=int, default=3000, help="the shared system prompt")
    parser.add_argument("--family", nargs="+", default=sorted(FAMILIES))
    parser.add_argument("--tokenizer", type=Path, help="SmolLM2's tokenizer files (a dir)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tokenizer = args.tokenizer or demo_tokenizer()
    rows = []
    for family in args.family:
        model = make_model(Path(tempfile.mkdtemp()), family, tokenizer)
        on, off = (asyncio.run(run(model, size, args)) for size in (1 << 30, 0))
        for name in on:
            row = {
                "family": family,
                "pattern": name,
                **on[name],
                "ttft_s_uncached": off[name]["ttft_s"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def demo_tokenizer() -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from make_model import demo_tokenizer_dir  # benchmarks/make_model.py

    return demo_tokenizer_dir()


if __name__ == "__main__":
    main()
