"""Fine-tuned adapters of one base model, served in one batch (multi-LoRA batching).

Each linear layer that some adapter changes is replaced by a `MultiLoRALinear`: the base layer
as it was (plain or quantized), and the low-rank matrices of every adapter that changes it,
stacked: row 0 is "no adapter" (zeros), row k adapter k. Before each forward pass the
generation loop says which adapter every row (or, in a pass that flattens prompt chunks with
decode rows, every token) applies: `Selection`, one object shared by all adapted layers. A
layer then reads its base weights once for all rows and adds each row's own delta
`scale_k * (x @ A_k) @ B_k`, gathered per token with `mx.gather_mm` (as mlx-lm's SwitchLinear
gathers experts); a pass where every row applies one adapter (or none) takes plain matmuls.

The arithmetic is mlx-lm's own (`mlx_lm/tuner/lora.py`, `dora.py`), so a row's tokens are those
of mlx-lm with that adapter alone. DoRA rescales each output by the adapter's magnitude over the
norm of the adapted weight: that factor depends only on the weights, so it is computed once here
(mlx-lm recomputes it every call); rows of a DoRA adapter also need the base product without its
bias, one more matmul over the layer's weights in the steps where they run.

An adapter declared `fuse: true` is merged into the weights instead, with mlx-lm's own
`load_adapters` and each layer's `fuse` (as `mlx_lm.fuse` does): the base then serves it, with
no per-step cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from ..lora_format import WEIGHTS, AdapterFiles, AdapterFormatError, read_adapter
from ..spec.adapters import ServedAdapter
from .storage import kinds
from .weights.quantized import use_cpu_quantized_matmul


class AdapterError(ValueError):
    """Adapters that cannot be served on this model; the message is one line."""


@dataclass
class Selection:
    """Which adapter each row (or token) of the next forward pass applies (0: none).

    `index` has the shape of the pass's input but its last axis, or broadcasts to it: (rows,
    1) for a call on (rows, width) tokens, (1, n) for n tokens flattened; None when no row
    applies an adapter. `present`: the adapters it holds (0 among them when some row applies
    none), known without reading it."""

    index: mx.array | None = None
    present: frozenset[int] = frozenset()

    def rows(self, adapters: Sequence[int]) -> None:
        """One adapter per row of a (rows, width) input."""
        self._set(adapters, (len(adapters), 1))

    def tokens(self, adapters: Sequence[int]) -> None:
        """One adapter per token of a (1, n) input."""
        self._set(adapters, (1, len(adapters)))

    def clear(self) -> None:
        self.index, self.present = None, frozenset()

    def _set(self, adapters: Sequence[int], shape: tuple[int, int]) -> None:
        self.present = frozenset(adapters)
        if self.present <= {0}:
            self.index = None
            return
        self.index = mx.array(list(adapters), dtype=mx.uint32).reshape(shape)


@dataclass
class AdapterBank:
    """The adapters a model serves in batches: adapter k is `names[k - 1]`."""

    names: tuple[str, ...]
    selection: Selection = field(default_factory=Selection)

    def index_of(self, name: str | None) -> int:
        """The adapter's number in the batch (0: the base alone)."""
        if name is None:
            return 0
        try:
            return self.names.index(name) + 1
        except ValueError:
            raise AdapterError(f"this model serves no adapter '{name}'") from None


class MultiLoRALinear(nn.Module):
    """A linear layer (plain or quantized) with the low-rank deltas of several adapters
    (module docstring)."""

    def __init__(self, base: nn.Module, parts: list[Part | None], selection: Selection):
        super().__init__()
        self.base = base
        dtype = _common_dtype(parts)
        rank = max(p.a.shape[1] for p in parts if p is not None)
        in_dims, out_dims = next((p.a.shape[0], p.b.shape[1]) for p in parts if p is not None)
        self.lora_a = mx.stack([_padded(p, "a", (in_dims, rank), dtype) for p in parts])
        self.lora_b = mx.stack([_padded(p, "b", (rank, out_dims), dtype) for p in parts])
        self.scales = mx.array([p.scale if p else 0.0 for p in parts], dtype=dtype)
        self.gains = mx.stack([_gain(p, out_dims) for p in parts])
        self.dora_rows = mx.array([p is not None and p.gain is not None for p in parts])
        # Plain attributes, not parameters: which adapters change this layer, which are DoRA.
        self.selection = selection
        self.targets = frozenset(k for k, p in enumerate(parts) if p is not None)
        self.dora = frozenset(
            k for k, p in enumerate(parts) if p is not None and p.gain is not None
        )

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)
        selection = self.selection
        active = selection.present & self.targets
        if not active:
            return y
        lead = x.shape[:-1]
        if len(selection.present) == 1:
            (k,) = selection.present
            z = (x.astype(self.lora_a.dtype) @ self.lora_a[k]) @ self.lora_b[k]
            delta = (self.scales[k] * z).astype(x.dtype)
            if k in self.dora:
                return self._dora(x, y, delta, self.gains[k])
            return y + delta
        assert selection.index is not None
        index = mx.broadcast_to(selection.index, lead).reshape(-1)
        flat = x.reshape(-1, 1, x.shape[-1]).astype(self.lora_a.dtype)
        z = mx.gather_mm(flat, self.lora_a, rhs_indices=index)
        z = mx.gather_mm(z, self.lora_b, rhs_indices=index).reshape(*lead, -1)
        delta = (self.scales[index].reshape(*lead, 1) * z).astype(x.dtype)
        if not active & self.dora:
            return y + delta
        scaled = self._dora(x, y, delta, self.gains[index].reshape(*lead, -1))
        return mx.where(self.dora_rows[index].reshape(*lead, 1), scaled, y + delta)

    def _dora(self, x: mx.array, y: mx.array, delta: mx.array, gain: mx.array) -> mx.array:
        """mlx-lm's DoRA output: the base product without its bias plus the delta, rescaled,
        then the bias."""
        base = self.base
        bias = "bias" in base
        plain = y if type(base) is nn.Linear and not bias else x @ dense_weight(base).T
        out = gain.astype(x.dtype) * (plain + delta)
        return out + base.bias if bias else out


@dataclass(frozen=True)
class Part:
    """One adapter's tensors for one layer: A (in, rank), B (rank, out), its scale, and for
    DoRA the gain of each output (the magnitude over the adapted weight's norm)."""

    a: mx.array
    b: mx.array
    scale: float
    gain: mx.array | None = None


def dense_weight(layer: nn.Module) -> mx.array:
    """A linear layer's weight, dequantized when it is quantized."""
    if isinstance(layer, nn.QuantizedLinear):
        return mx.dequantize(
            layer.weight,
            layer.scales,
            layer.get("biases"),
            group_size=layer.group_size,
            bits=layer.bits,
            mode=layer.mode,
        )
    return layer.weight


def _gain(part: Part | None, out_dims: int) -> mx.array:
    if part is None or part.gain is None:
        return mx.ones((out_dims,), dtype=mx.float32)
    return part.gain.astype(mx.float32)


def _padded(part: Part | None, leaf: str, shape: tuple[int, int], dtype: mx.Dtype) -> mx.array:
    """The part's A or B (`leaf`) in the top-left of zeros of `shape` (an adapter of lower
    rank; none: zeros)."""
    out = mx.zeros(shape, dtype=dtype)
    if part is None:
        return out
    array = part.a if leaf == "a" else part.b
    rows, cols = array.shape
    out[:rows, :cols] = array.astype(dtype)
    return out


def _common_dtype(parts: list[Part | None]) -> mx.Dtype:
    dtypes = {p.a.dtype for p in parts if p is not None} | {p.b.dtype for p in parts if p}
    if mx.default_device() == mx.cpu or len(dtypes) > 1:
        return mx.float32  # half precision is slow on a CPU; mixed ones meet at float32
    return dtypes.pop()


def bank_of(model: Any) -> AdapterBank | None:
    """The adapters `attach` gave the model (None: none)."""
    bank = getattr(model, "adapter_bank", None)
    return bank if isinstance(bank, AdapterBank) else None


def prepare(
    model: nn.Module, adapters: Sequence[ServedAdapter], distributed: bool = False
) -> AdapterBank | None:
    """The spec's adapters of this model: a fused one merged into its weights, the others
    attached for batching. None when it has none to batch. Raises AdapterError where they
    cannot be served: batches of adapters run on the engine's own loop, on one process."""
    if adapters and distributed:
        raise AdapterError("adapters are not served on a model split over ranks")
    for adapter in adapters:
        if adapter.fuse:
            fuse(model, adapter.path)
    batched = [(a.id, a.path) for a in adapters if not a.fuse]
    if batched and not kinds(model):
        raise AdapterError(
            "adapters are batched on the engine's own loop, and this model keeps caches it "
            "does not hold (they run on mlx-lm's batch caches); fuse one adapter instead"
        )
    return attach(model, batched) if batched else None


def fuse(model: nn.Module, path: Path) -> None:
    """The adapter merged into the model's weights, as `mlx_lm.fuse` merges it."""
    from mlx_lm.tuner.utils import load_adapters

    _check(model, _read(path))
    load_adapters(model, str(path))
    fused = [(name, m.fuse()) for name, m in model.named_modules() if hasattr(m, "fuse")]
    model.update_modules(tree_unflatten(fused))
    if mx.default_device() == mx.cpu:  # fused quantized layers are mlx's own class again
        use_cpu_quantized_matmul(model)


def attach(model: nn.Module, adapters: Sequence[tuple[str, Path]]) -> AdapterBank:
    """Every adapter's layers on the model, for batching; its bank (`bank_of`)."""
    bank = AdapterBank(tuple(name for name, _ in adapters))
    files = [_read(path) for _, path in adapters]
    modules = dict(model.named_modules())
    parts: dict[str, list[Part | None]] = {}
    for k, adapter in enumerate(files, start=1):
        _check(model, adapter, modules)
        weights = mx.load(str(adapter.path / WEIGHTS))
        assert isinstance(weights, dict)  # a safetensors file loads as a mapping
        for module in adapter.modules:
            layer = parts.setdefault(module.module, [None] * (len(files) + 1))
            layer[k] = _part(modules[module.module], weights, module.module, adapter)
    swapped = [
        (name, MultiLoRALinear(modules[name], layer, bank.selection))
        for name, layer in parts.items()
    ]
    model.update_modules(tree_unflatten(swapped))
    mx.eval(model.parameters())
    model.adapter_bank = bank
    return bank


def _part(layer: nn.Module, weights: dict[str, mx.array], name: str, files: AdapterFiles) -> Part:
    a, b = weights[f"{name}.lora_a"], weights[f"{name}.lora_b"]
    scale = files.config.scale
    if files.config.fine_tune != "dora":
        return Part(a, b, scale)
    # mlx-lm's DoRALinear: m is the weight's row norms unless the file holds its own.
    w = dense_weight(layer)
    m = weights.get(f"{name}.m", mx.linalg.norm(w.astype(mx.float32), axis=1))
    adapted = w + (scale * b.T) @ a.T
    return Part(a, b, scale, m / mx.linalg.norm(adapted, axis=1))


def _read(path: Path) -> AdapterFiles:
    try:
        return read_adapter(path)
    except AdapterFormatError as error:
        raise AdapterError(f"adapter {path}: {error}") from None


def _check(
    model: nn.Module, adapter: AdapterFiles, modules: dict[str, nn.Module] | None = None
) -> None:
    """Each module the adapter changes is a linear layer of this model, of its shape."""
    modules = dict(model.named_modules()) if modules is None else modules
    for module in adapter.modules:
        layer = modules.get(module.module)
        where = f"adapter {adapter.path}: {module.module}"
        if not isinstance(layer, nn.Linear | nn.QuantizedLinear):
            kind = "no layer" if layer is None else f"a {type(layer).__name__}"
            raise AdapterError(f"{where}: the model has {kind} there, not a linear layer")
        out_dims, in_dims = dense_weight(layer).shape
        a, b = module.leaves.get("lora_a"), module.leaves.get("lora_b")
        if a is None or b is None or (a[0], b[-1]) != (in_dims, out_dims):
            raise AdapterError(
                f"{where}: lora_a {a} and lora_b {b} do not fit a {in_dims} -> {out_dims} layer"
            )
