"""Random LoRA and DoRA adapters in mlx-lm's format (as `mlx_lm.lora` writes them), for the
adapter tests: `adapter_config.json` and `adapters.safetensors` with non-zero B matrices (and
DoRA magnitudes off the weights' own norms), so that an adapter really changes the answer."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx

ATTENTION = ("self_attn.q_proj", "self_attn.v_proj")
MIXED_KEYS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj")


def make_adapter(
    out: Path,
    model: Any,
    *,
    keys: Sequence[str] = ATTENTION,
    rank: int = 4,
    scale: float = 10.0,
    num_layers: int = -1,
    kind: str = "lora",
    seed: int = 0,
) -> Path:
    """An adapter of `model` (an mlx-lm model) in directory `out`: the modules `keys` of its
    last `num_layers` layers (all when <= 0), as mlx-lm's `linear_to_lora_layers` picks them."""
    out.mkdir(parents=True, exist_ok=True)
    mx.random.seed(seed)
    layers = len(model.layers)
    first = max(0, layers - num_layers) if num_layers > 0 else 0
    modules = dict(model.named_modules())
    tensors: dict[str, mx.array] = {}
    for i in range(first, layers):
        for key in keys:
            name = f"model.layers.{i}.{key}"
            out_dims, in_dims = _dims(modules[name])
            bound = in_dims**-0.5
            tensors[f"{name}.lora_a"] = mx.random.uniform(-bound, bound, (in_dims, rank))
            tensors[f"{name}.lora_b"] = mx.random.normal((rank, out_dims)) * 0.05
            if kind == "dora":
                norm = mx.linalg.norm(_weight(modules[name]).astype(mx.float32), axis=1)
                tensors[f"{name}.m"] = norm * (1 + 0.3 * mx.random.normal((out_dims,)))
    mx.save_safetensors(str(out / "adapters.safetensors"), tensors)
    config = {
        "fine_tune_type": kind,
        "num_layers": num_layers,
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0, "keys": list(keys)},
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def _weight(layer: Any) -> mx.array:
    if hasattr(layer, "scales"):
        return mx.dequantize(
            layer.weight, layer.scales, layer.get("biases"), layer.group_size, layer.bits
        )
    return layer.weight


def _dims(layer: Any) -> tuple[int, int]:
    out_dims, in_dims = layer.weight.shape
    if hasattr(layer, "scales"):
        in_dims = in_dims * 32 // layer.bits
    return out_dims, in_dims


def louder_copy(source: Path, out: Path) -> Path:
    """A copy of the model directory `source` with louder weights: at their initial scale,
    random weights give each prompt one token over and over, whatever an adapter adds."""
    out.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, out / path.name)
    weights = mx.load(str(source / "model.safetensors"))
    louder = {k: w if "norm" in k or w.ndim < 2 else w * 3 for k, w in weights.items()}
    mx.save_safetensors(str(out / "model.safetensors"), louder)
    return out
