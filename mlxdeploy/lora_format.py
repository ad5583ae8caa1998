"""mlx-lm's adapter format, as `mlx_lm.lora` writes it, read from file headers only.

An adapter is a directory with `adapter_config.json` (`fine_tune_type` lora or dora,
`num_layers`, `lora_parameters` with `rank`, `scale` and optional `keys`) and
`adapters.safetensors`: for each adapted linear layer `<module>.lora_a` (in, rank) and
`<module>.lora_b` (rank, out), and for DoRA `<module>.m` (out,). mlx-lm adapts the modules
named by `keys` (default: every linear layer) in the last `num_layers` decoder layers (all
when it is 0 or less).

`validate` checks an adapter against its base here, from the adapter's config and the headers
of both safetensors files: no weights are read and nothing imports mlx. The engine reads the
same facts before it loads the tensors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .footprint import safetensors_header

CONFIG = "adapter_config.json"
WEIGHTS = "adapters.safetensors"
LEAVES = ("lora_a", "lora_b", "m")
# A module inside a decoder layer: everything before `layers.<n>.`, the layer, the rest.
_IN_LAYER = re.compile(r"^(?P<stack>(?:.*\.)?layers)\.(?P<layer>\d+)\.(?P<key>.+)$")

FineTune = Literal["lora", "dora"]


class AdapterFormatError(ValueError):
    """An adapter that cannot be read or does not fit its base; the message is one line."""


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class AdapterConfig:
    fine_tune: FineTune
    rank: int
    scale: float
    num_layers: int
    keys: tuple[str, ...] | None  # None: every linear layer of the adapted decoder layers


@dataclass(frozen=True)
class Adapted:
    """One module an adapter changes: where it is and its tensors' shapes by leaf."""

    module: str
    layer: int | None  # its decoder layer; None: outside the decoder layers
    key: str  # its path inside the decoder layer (the module path outside them)
    leaves: Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class AdapterFiles:
    path: Path
    config: AdapterConfig
    tensors: Mapping[str, Tensor]

    @property
    def modules(self) -> list[Adapted]:
        """The modules the adapter changes, in file order."""
        grouped: dict[str, dict[str, tuple[int, ...]]] = {}
        for name, tensor in self.tensors.items():
            module, _, leaf = name.rpartition(".")
            grouped.setdefault(module, {})[leaf] = tensor.shape
        return [_adapted(module, leaves) for module, leaves in grouped.items()]


def _adapted(module: str, leaves: dict[str, tuple[int, ...]]) -> Adapted:
    found = _IN_LAYER.match(module)
    if found is None:
        return Adapted(module, None, module, leaves)
    return Adapted(module, int(found["layer"]), found["key"], leaves)


def read_header(path: Path) -> dict[str, Tensor]:
    """The tensors a .safetensors file declares (name -> dtype and shape), from its header."""
    try:
        header = safetensors_header(path)
    except OSError as error:
        raise AdapterFormatError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError as error:  # no header, or undecodable JSON
        raise AdapterFormatError(f"{path.name} has an unreadable header: {error}") from None
    return {
        name: Tensor(str(info["dtype"]), tuple(int(d) for d in info["shape"]))
        for name, info in header.items()
    }


def read_adapter(path: Path) -> AdapterFiles:
    """The adapter in directory `path`: its config and the tensors its file declares."""
    if not path.is_dir():
        raise AdapterFormatError(f"no adapter directory at {path}")
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise AdapterFormatError(
                f"{path} has no {name}; an adapter is a directory as mlx_lm.lora writes it "
                f"({CONFIG}, {WEIGHTS})"
            )
    try:
        raw = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AdapterFormatError(f"cannot read {path / CONFIG}: {error}") from None
    config = parse_config(raw)
    tensors = read_header(path / WEIGHTS)
    for name in tensors:
        if name.rpartition(".")[2] not in LEAVES:
            raise AdapterFormatError(
                f"{WEIGHTS} holds '{name}', which is not a LoRA or DoRA tensor "
                f"({', '.join(LEAVES)}); full fine-tunes are served as models of their own"
            )
    return AdapterFiles(path, config, tensors)


def parse_config(raw: Any) -> AdapterConfig:
    if not isinstance(raw, dict):
        raise AdapterFormatError(f"{CONFIG} is not a JSON object")
    fine_tune = raw.get("fine_tune_type", "lora")
    if fine_tune not in ("lora", "dora"):
        raise AdapterFormatError(
            f"fine_tune_type is {fine_tune!r}; adapters are lora or dora (a full fine-tune is "
            "a model of its own: serve it as one)"
        )
    params = raw.get("lora_parameters")
    if not isinstance(params, dict):
        raise AdapterFormatError(f"{CONFIG} has no lora_parameters object")
    rank, scale = params.get("rank"), params.get("scale")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterFormatError(f"lora_parameters.rank must be an integer >= 1, got {rank!r}")
    if not isinstance(scale, int | float) or isinstance(scale, bool):
        hint = " (mlx-lm's key is scale, not alpha)" if "alpha" in params else ""
        raise AdapterFormatError(f"lora_parameters.scale must be a number{hint}")
    keys = params.get("keys")
    if keys is not None and not (
        isinstance(keys, list) and all(isinstance(k, str) and k for k in keys)
    ):
        raise AdapterFormatError("lora_parameters.keys must be a list of module paths")
    layers = raw.get("num_layers", 16)
    if not isinstance(layers, int) or isinstance(layers, bool):
        raise AdapterFormatError(f"num_layers must be an integer, got {layers!r}")
    return AdapterConfig(
        fine_tune, rank, float(scale), layers, None if keys is None else tuple(keys)
    )


@dataclass(frozen=True)
class BaseLinear:
    """A linear layer of the base model, as its weights' headers declare it."""

    out_dims: int
    in_dims: int
    experts: int = 0  # a SwitchLinear's experts (a 3-d weight); 0: a plain linear layer


@dataclass
class BaseLayout:
    """What an adapter is checked against: the base's layer count and the linear layers its
    weights declare, by module path."""

    num_layers: int | None
    linears: dict[str, BaseLinear] = field(default_factory=dict)

    @classmethod
    def of(cls, config: Mapping[str, Any], headers: Iterable[Mapping[str, Tensor]]) -> BaseLayout:
        text = config.get("text_config")
        scope = text if isinstance(text, dict) else config
        layers = scope.get("num_hidden_layers", config.get("num_hidden_layers"))
        layout = cls(layers if isinstance(layers, int) else None)
        quantization = config.get("quantization")
        for header in headers:
            for name, tensor in header.items():
                module, _, leaf = name.rpartition(".")
                if leaf == "weight" and len(tensor.shape) in (2, 3):
                    bits = _bits(quantization, module) if f"{module}.scales" in header else None
                    layout.linears[module] = _linear(tensor.shape, bits)
        return layout

    def keys(self) -> set[str]:
        """The module paths inside the decoder layers (as `keys` names them)."""
        return {found["key"] for m in self.linears if (found := _IN_LAYER.match(m))}


def _bits(quantization: Any, module: str) -> int:
    if not isinstance(quantization, dict):
        return 32  # scales without a quantization config: read the shape as it is
    own = quantization.get(module)
    if isinstance(own, dict) and isinstance(own.get("bits"), int):
        return int(own["bits"])
    bits = quantization.get("bits")
    return int(bits) if isinstance(bits, int) else 32


def _linear(shape: tuple[int, ...], bits: int | None) -> BaseLinear:
    *experts, out_dims, packed = shape
    in_dims = packed * 32 // bits if bits else packed
    return BaseLinear(out_dims, in_dims, experts[0] if experts else 0)


def problems(adapter: AdapterFiles, base: BaseLayout) -> list[str]:
    """What keeps `adapter` from running on `base` (empty: nothing), one line each."""
    config, found = adapter.config, []
    if base.num_layers is not None and config.num_layers > base.num_layers:
        found.append(
            f"num_layers is {config.num_layers}, the base model has {base.num_layers} layers"
        )
    if config.keys is not None and base.linears:
        known = base.keys()
        for key in config.keys:
            if key not in known and key not in base.linears:
                found.append(f"keys names '{key}', which is no linear layer of the base model")
    first = _first_layer(config, base)
    for module in adapter.modules:
        problem = _module_problem(module, config, base, first)
        if problem is not None:
            found.append(problem)
    return found


def _first_layer(config: AdapterConfig, base: BaseLayout) -> int:
    """The first decoder layer mlx-lm adapts (the last `num_layers`; all when <= 0)."""
    if base.num_layers is None or config.num_layers <= 0:
        return 0
    return max(0, base.num_layers - config.num_layers)


def _module_problem(
    module: Adapted, config: AdapterConfig, base: BaseLayout, first: int
) -> str | None:
    name, leaves = module.module, module.leaves
    if module.layer is None:
        return f"{name}: only linear layers inside the decoder layers can carry an adapter"
    if "lora_a" not in leaves or "lora_b" not in leaves:
        return f"{name}: needs both lora_a and lora_b"
    if module.layer < first:
        return (
            f"{name}: layer {module.layer} is not among the last {config.num_layers} layers "
            f"that num_layers adapts"
        )
    if config.keys is not None and module.key not in config.keys:
        return f"{name}: '{module.key}' is not among lora_parameters.keys"
    a, b = leaves["lora_a"], leaves["lora_b"]
    if len(a) != 2 or len(b) != 2 or a[1] != config.rank or b[0] != config.rank:
        return (
            f"{name}: lora_a {a} and lora_b {b} do not have rank {config.rank} "
            f"(lora_parameters.rank)"
        )
    if "m" in leaves and config.fine_tune != "dora":
        return f"{name}: holds a DoRA magnitude (m) but fine_tune_type is lora"
    return _shape_problem(name, a[0], b[1], leaves.get("m"), base)


def _shape_problem(
    name: str, in_dims: int, out_dims: int, m: tuple[int, ...] | None, base: BaseLayout
) -> str | None:
    if not base.linears:  # the base's headers were not read (weights not on this machine)
        return None
    linear = base.linears.get(name)
    if linear is None:
        return f"{name}: the base model has no linear layer by this name"
    if linear.experts:
        return f"{name}: expert layers (SwitchLinear) are not served with adapters"
    if (in_dims, out_dims) != (linear.in_dims, linear.out_dims):
        return (
            f"{name}: the adapter maps {in_dims} -> {out_dims} features, the base layer "
            f"{linear.in_dims} -> {linear.out_dims}"
        )
    if m is not None and m != (out_dims,):
        return f"{name}: m has shape {m}, expected ({out_dims},)"
    return None
