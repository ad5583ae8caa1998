"""An early-exit model pair from random weights: a target that agrees with a much smaller draft.

    python benchmarks/early_exit.py /tmp/ee --layers 16 --draft-layers 2 --tail-scale 0 0.05
    python benchmarks/early_exit.py /tmp/ee --preset gpu-8b --draft-layers 4 --tail-scale 0

- Target (`target-<scale>/`): a random llama of `--layers` layers (`make_model.py`'s shapes)
  whose layers from `--draft-layers` on have their output projections (attention `o_proj`,
  MLP `down_proj`) multiplied by the tail scale. At 0 those layers add exactly nothing to the
  residual stream and still cost their full compute (zeros multiply as fast as any weights).
- Draft (`draft/`): the same model cut to its first `--draft-layers` layers (same embeddings,
  final norm and output projection), a model directory of its own.

At tail scale 0 the target's greedy tokens are the draft's; a small nonzero scale lets the
tail move the logits a little, so the pair agrees less often. Both directories load with
`mlx_lm.load` and serve with `mlxdeploy up` (`draft_model:`).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from make_model import PRESETS, TOKENIZER_FILES, Shape, demo_tokenizer_dir, make_model

TAIL = re.compile(r"model\.layers\.(\d+)\.(self_attn\.o_proj|mlp\.down_proj)\.weight")
LAYER = re.compile(r"model\.layers\.(\d+)\.")


def target_dir(out: Path, scale: float) -> Path:
    """Where the target of one tail scale is written."""
    return out / f"target-{scale:g}"


def draft_dir(out: Path) -> Path:
    return out / "draft"


def _load(model_dir: Path) -> tuple[dict, dict]:
    """(weights by name, config) of a model directory."""
    import mlx.core as mx

    weights = mx.load(str(model_dir / "model.safetensors"))
    assert isinstance(weights, dict)
    return weights, json.loads((model_dir / "config.json").read_text())


def _save(model_dir: Path, weights: dict, config: dict, tokenizer: Path) -> None:
    import mlx.core as mx

    model_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).exists() and tokenizer != model_dir:
            shutil.copy(tokenizer / name, model_dir / name)
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    mx.save_safetensors(str(model_dir / "model.safetensors"), weights, metadata={"format": "mlx"})


def scale_tail(weights: dict, first: int, scale: float) -> dict:
    """The weights with the output projections of layers `first` on multiplied by `scale`."""
    out = dict(weights)
    for name, value in weights.items():
        match = TAIL.fullmatch(name)
        if match and int(match.group(1)) >= first:
            out[name] = value * scale
    return out


def truncate(weights: dict, config: dict, layers: int) -> tuple[dict, dict]:
    """The model's first `layers` layers, with its embeddings, final norm and output."""
    kept = {
        name: value
        for name, value in weights.items()
        if (m := LAYER.match(name)) is None or int(m.group(1)) < layers
    }
    return kept, {**config, "num_hidden_layers": layers}


def make_pair(
    out: Path, shape: Shape, draft_layers: int, scales: list[float], seed: int = 0,
    tokenizer: Path | None = None,
) -> tuple[list[Path], Path]:  # fmt: skip
    """Write one target per tail scale and the draft under `out`; (targets, draft)."""
    if not 0 < draft_layers < shape.layers:
        raise ValueError(f"--draft-layers {draft_layers}: between 1 and {shape.layers - 1}")
    base = out / "base"
    shape = make_model(base, shape, seed, tokenizer or demo_tokenizer_dir())
    weights, config = _load(base)
    targets = []
    for scale in scales:
        targets.append(target_dir(out, scale))
        _save(targets[-1], scale_tail(weights, draft_layers, scale), config, base)
    _save(draft_dir(out), *truncate(weights, config, draft_layers), base)
    shutil.rmtree(base)
    pair = {"shape": asdict(shape), "draft_layers": draft_layers, "seed": seed}
    (out / "pair.json").write_text(json.dumps(pair, indent=2) + "\n")
    print(f"draft: {draft_layers} of {shape.layers} layers; targets at tail scales {scales}")
    return targets, draft_dir(out)


def parse_shape(args: argparse.Namespace) -> Shape:
    """The preset with the size flags given on the command line."""
    fields = {k: v for k, v in vars(args).items() if k in Shape.__dataclass_fields__}
    return replace(PRESETS[args.preset], **{k: v for k, v in fields.items() if v is not None})


def ensure_pair(out: Path, args: argparse.Namespace) -> None:
    """The pair of the command line's shape under `out`, with a target for each of its tail
    scales: written if missing; a pair already there keeps the shape it was made with."""
    ready = [target_dir(out, s) for s in args.tail_scale] + [draft_dir(out)]
    if all((d / "config.json").exists() for d in ready):
        return
    shape, layers, seed = parse_shape(args), args.draft_layers, args.seed
    if (out / "pair.json").exists():
        made = json.loads((out / "pair.json").read_text())
        shape, layers, seed = Shape(**made["shape"]), made["draft_layers"], made["seed"]
        print(f"{out}: adding tail scales to the pair made as {made}")
    make_pair(out, shape, layers, args.tail_scale, seed, args.tokenizer)


def add_shape_args(parser: argparse.ArgumentParser) -> None:
    """`--preset` and the size flags of `make_model.py`, and the pair's own."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-30m")
    for name in ("hidden", "layers", "intermediate", "heads", "kv_heads"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help="overrides the preset")
    parser.add_argument("--dtype", help="overrides the preset (float32, float16, bfloat16)")
    parser.add_argument("--draft-layers", type=int, default=2)
    parser.add_argument("--tail-scale", type=float, nargs="+", default=[0.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", type=Path, help="tokenizer files (default: the demo's)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write the pair into")
    add_shape_args(parser)
    args = parser.parse_args()
    make_pair(
        args.out, parse_shape(args), args.draft_layers, args.tail_scale, args.seed, args.tokenizer
    )


if __name__ == "__main__":
    main()
