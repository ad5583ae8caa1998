"""Keys and values kept quantized in slots: `SlotQuantizedKVCache`, in place of `SlotKVCache`
for full-attention layers when the spec sets `engine.kv_bits`.

Each layer holds, for every slot, what mlx-lm's `QuantizedKVCache` holds for one stream: the
keys and the values as `mx.quantize` gives them (packed uint32 data, scales and biases per
group of `group_size` along the head dimension), written in place like `SlotKVCache`'s, so
quantized rows batch with each other and nothing is gathered. Attention reads them through
mlx-lm's `scaled_dot_product_attention`, which takes the quantized path when the cache has a
`bits` attribute.

Where quantization starts (`start`): a slot's history is quantized once its length reaches
`start`, all of it, at once (as mlx-lm's `maybe_quantize_kv_cache` turns a `KVCache` into a
`QuantizedKVCache` after the call that takes it there). Until then it stays in a
full-precision `SlotKVCache` beside the quantized store, which holds at most `start` plus a
chunk of positions per slot (nothing at `start` 0: every key is quantized as it is written).
One attention call reads one kind: a call is quantized when any of its rows is. A row of it
still below `start` keeps its history in full precision and is read, in that call only,
through a quantized copy (a decode step also reads the free and prompt-reading slots below its
highest row, unread: their histories must not change kind because of it). So a row's stored
cache never depends on its neighbours; its tokens do only when a real row below `start` shares
a call with rows past it (a prompt read beside a longer one), where its keys are read
quantized a little early. A slot's length may go back (speculative decoding rolls back rejected
guesses, `speculative.py`): positions past it stay in either store until overwritten, never
attended to (a query sees keys up to its own position), and converting a history reads its
first `length` positions only. A length never goes back past the start of the call that wrote
beyond it, so a slot converted by a call stays at or past `start`. Sliding-window layers keep
full precision (their ring is bounded anyway; mlx-lm cannot quantize them at all).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import KVCache, QuantizedKVCache, make_prompt_cache

from .storage import (
    BLOCK,
    SLOT_BLOCK,
    Call,
    SlotCache,
    SlotKeysCache,
    SlotKVCache,
    Slots,
    grow,
    read_rows,
    round_up,
    write_rows,
)

Quantized = list[mx.array]  # (data, scales, biases)


def cuda_backend() -> bool:
    """Whether MLX runs on its CUDA backend (a GPU that is not Metal's)."""
    return bool(mx.default_device() == mx.gpu and not mx.metal.is_available())


@dataclass(frozen=True)
class KVQuantization:
    """How a model's keys and values are kept: `bits` per element in groups of
    `group_size`, from token position `start` on. `on_read`: attention reads them
    dequantized (a transient full-precision copy per layer and call, through the fused
    kernel) instead of through `mx.quantized_matmul`, which mlx's CUDA backend lacks for
    prompt-shaped calls; the cache stays quantized either way."""

    bits: int
    group_size: int = 64
    start: int = 0
    on_read: bool = field(default_factory=cuda_backend)

    def holder(self, slots: Slots) -> SlotQuantizedKVCache:
        """What `Slots.for_model` puts in each full-attention layer."""
        return SlotQuantizedKVCache(slots, self)

    def check(self, model: Any) -> None:
        """Raise ValueError, saying why, when the model's heads cannot be kept this way: at
        load, instead of at a request."""
        for width in sorted(head_sizes(model)):
            self._check_width(width)

    def dequantize(self, parts: Sequence[mx.array]) -> mx.array:
        data, scales, biases = parts
        return mx.dequantize(data, scales, biases, group_size=self.group_size, bits=self.bits)

    def quantize(self, a: mx.array) -> Quantized:
        self._check_width(a.shape[-1])
        return list(mx.quantize(a, group_size=self.group_size, bits=self.bits))

    def _check_width(self, width: int) -> None:
        if width % self.group_size:
            message = (
                f"engine.kv_group_size {self.group_size} does not divide the model's head size "
                f"{width}: use 32, 64 or 128, whichever divides it"
            )
            raise ValueError(message)


class _Widths(KVCache):
    """A `KVCache` that notes the widths of the keys and values written to it."""

    def __init__(self, widths: set[int]):
        super().__init__()
        self.widths = widths

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self.widths.update((keys.shape[-1], values.shape[-1]))
        return super().update_and_fetch(keys, values)


def head_sizes(model: Any) -> set[int]:
    """The widths of the keys and values the model's full-attention layers keep, from a
    one-token call that is built, never evaluated (shapes are known without computing)."""
    widths: set[int] = set()
    caches = [_Widths(widths) if type(c) is KVCache else c for c in make_prompt_cache(model)]
    model(mx.array([[0]]), cache=caches)
    return widths


class SlotQuantizedKVCache(SlotKeysCache):
    """One layer's keys and values, quantized slot by slot (module docstring)."""

    def __init__(self, slots: Slots, quantization: KVQuantization):
        super().__init__(slots)
        self.quantization = quantization
        self.group_size = quantization.group_size
        self.full = SlotKVCache(slots)  # slots whose history is still below `start`
        self.keys: Quantized | None = None
        self.values: Quantized | None = None
        self.quantized: set[int] = set()  # slots whose history is in `keys` and `values`

    @classmethod
    def like(cls, slots: Slots, other: SlotCache) -> SlotCache:
        assert isinstance(other, SlotQuantizedKVCache)
        return cls(slots, other.quantization)

    @property
    def bits(self) -> int:
        """Present only while the planned call reads quantized keys: mlx-lm's attention
        checks `hasattr(cache, "bits")` to take its quantized path."""
        if self.quantization.on_read or not self._is_quantized(self._active().call):
            raise AttributeError("bits")
        return self.quantization.bits

    def make_mask(self, n: int, return_array: bool = False, **kwargs: Any) -> Any:
        return self.full.make_mask(n, return_array=return_array, **kwargs)

    def arrays(self) -> list[mx.array]:
        held = [*(self.keys or []), *(self.values or [])]
        return self.full.arrays() + held

    def reset(self, slot: int) -> None:
        self.quantized.discard(slot)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[Any, Any]:
        call = self._active().call
        if not self._is_quantized(call):
            return self.full.update_and_fetch(keys, values)
        start, lagging = self.quantization.start, []
        for i, (row, length) in enumerate(zip(call.rows, call.starts, strict=True)):
            if row in self.quantized:
                continue
            if length >= start:
                self._convert(row, length)
            else:
                lagging.append(i)
        q_keys, q_values = self.quantization.quantize(keys), self.quantization.quantize(values)
        self._reserve(q_keys, q_values, max(call.rows) + 1, call.end)
        assert self.keys is not None and self.values is not None
        for store, new in zip(self.keys + self.values, q_keys + q_values, strict=True):
            write_rows(store, call, new)
        for i in lagging:
            row, length = call.rows[i], call.starts[i]
            self._lag(row, length, keys[i : i + 1], values[i : i + 1])
        read_keys, read_values = _read(self.keys, call), _read(self.values, call)
        if self.quantization.on_read:
            q = self.quantization
            return q.dequantize(read_keys), q.dequantize(read_values)
        return read_keys, read_values

    def _lag(self, slot: int, length: int, keys: mx.array, values: mx.array) -> None:
        """A row below `start` in a quantized call: its new keys join its full-precision
        history, and this call reads a quantized copy of all of it (written where the slot's
        quantized history will go: nothing else reads it there until the slot converts)."""
        if length:
            old_keys, old_values = self.full.copy(slot, length)
            keys = mx.concatenate([old_keys, keys], axis=2)
            values = mx.concatenate([old_values, values], axis=2)
        self.full.place(slot, [keys, values], keys.shape[2])
        self._place(slot, self.quantization.quantize(keys), self.quantization.quantize(values))

    def _is_quantized(self, call: Call) -> bool:
        start = self.quantization.start
        return any(
            s >= start or r in self.quantized for r, s in zip(call.rows, call.starts, strict=True)
        )

    def _convert(self, slot: int, length: int) -> None:
        """The slot's full-precision history of `length` positions, quantized."""
        self.quantized.add(slot)
        if length and self.full.keys is not None:
            keys, values = self.full.copy(slot, length)
            self._place(slot, self.quantization.quantize(keys), self.quantization.quantize(values))

    # -- the prefix cache's view ----------------------------------------------------------
    def extract(self, slot: int, length: int) -> Any:
        if slot not in self.quantized:
            return self.full.extract(slot, length)
        q = self.quantization
        own = QuantizedKVCache(group_size=q.group_size, bits=q.bits)
        if self.keys is not None and length:
            keys, values = self.copy(slot, length)
            own.state = (keys, values, length, q.group_size, q.bits)
        return own

    def copy(self, slot: int, length: int) -> list[Any]:
        """[keys, values], each an array (full precision) or a list of three (quantized)."""
        if slot not in self.quantized:
            return self.full.copy(slot, length)
        assert self.keys is not None and self.values is not None
        return [
            [mx.contiguous(a[slot : slot + 1, :, :length, :]) for a in store]
            for store in (self.keys, self.values)
        ]

    def parts_of(self, cache: Any, length: int) -> list[Any]:
        if isinstance(cache, KVCache):
            return self.full.parts_of(cache, length)
        keys, values = cache.keys, cache.values
        return [[a[..., :length, :] for a in keys], [a[..., :length, :] for a in values]]

    def place(self, slot: int, parts: list[Any], length: int) -> None:
        """A history from the prefix cache or another slot: quantized when it is or when it
        reaches `start`, else kept in full precision."""
        keys, values = parts
        self.quantized.discard(slot)
        if isinstance(keys, mx.array) and length < self.quantization.start:
            self.full.place(slot, parts, length)
            return
        if isinstance(keys, mx.array):
            keys, values = self.quantization.quantize(keys), self.quantization.quantize(values)
        self.quantized.add(slot)
        if keys[0].shape[2]:
            self._place(slot, keys, values)

    def _place(self, slot: int, keys: Quantized, values: Quantized) -> None:
        length = keys[0].shape[2]
        self._reserve(keys, values, slot + 1, length)
        assert self.keys is not None and self.values is not None
        for store, part in zip(self.keys + self.values, keys + values, strict=True):
            store[slot : slot + 1, :, :length, :] = part

    def _reserve(self, keys: Quantized, values: Quantized, rows: int, positions: int) -> None:
        """Room for `rows` slots of `positions` positions, grown by whole blocks."""
        if self.keys is None or self.values is None:
            rows, positions = round_up(rows, SLOT_BLOCK), round_up(positions, BLOCK)
            self.keys = [_zeros(a, rows, positions) for a in keys]
            self.values = [_zeros(a, rows, positions) for a in values]
            return
        have_rows, _, have_positions, _ = self.keys[0].shape
        if positions > have_positions:
            more = round_up(positions, BLOCK) - have_positions
            self.keys = [grow(a, 2, more) for a in self.keys]
            self.values = [grow(a, 2, more) for a in self.values]
        if rows > have_rows:
            more = round_up(rows, SLOT_BLOCK) - have_rows
            self.keys = [grow(a, 0, more) for a in self.keys]
            self.values = [grow(a, 0, more) for a in self.values]


def _zeros(like: mx.array, rows: int, positions: int) -> mx.array:
    return mx.zeros((rows, like.shape[1], positions, like.shape[3]), like.dtype)


def _read(store: Quantized, call: Call) -> tuple[mx.array, ...]:
    return tuple(read_rows(a, call) for a in store)
