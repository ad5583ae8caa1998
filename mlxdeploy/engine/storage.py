"""Where the keys and values of the requests being served live: one slot per request, never
copied whole.

Every layer's `SlotKVCache` holds (slots, kv heads, capacity, head dim) keys and values, each
slot's history left-aligned at [0, its length). A request takes a free slot when it is
admitted; its prompt is written straight into it, each decode step writes one position of
each slot, and a request that ends only marks its slot free. Nothing concatenates or gathers
the batch: the arrays grow (a copy) only when more slots or positions are needed than were
ever held, by whole blocks.

What the next forward pass reads is a `Call`: which slots, where each one's new tokens start,
and how many tokens of the input's width each holds (prompts of different lengths read in
one call are right-padded; the padding's keys land past the slot's length, where nothing
attends to them until real tokens overwrite them). All the layers' caches follow one `Slots`.
The caches answer mlx-lm's attention modules as its own caches do (`offset`,
`update_and_fetch`, `make_mask`), so the models run unchanged.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import KVCache

BLOCK = 256  # positions are added in blocks of this many
SLOT_BLOCK = 8  # slots are added in blocks of this many


@dataclass(frozen=True)
class Call:
    """One forward pass over `rows` (slots), each with `width` input tokens starting at its
    position in `starts` (its length before the call)."""

    rows: tuple[int, ...]
    starts: tuple[int, ...]
    width: int

    @property
    def end(self) -> int:
        """Positions the call's keys span."""
        return max(self.starts) + self.width

    @property
    def span(self) -> tuple[int, int] | None:
        """(first, last + 1) when the rows are consecutive slots: one slice holds them."""
        rows = self.rows
        if rows == tuple(range(rows[0], rows[0] + len(rows))):
            return rows[0], rows[-1] + 1
        return None

    @property
    def uniform(self) -> bool:
        return len(set(self.starts)) == 1


@dataclass(frozen=True)
class Planned:
    """A call with what the attention modules ask of it: where rotary embeddings start, the
    mask."""

    call: Call
    offset: Any  # an int when every row starts at one position, else one per row
    mask: Any  # None, "causal", or a boolean array

    @classmethod
    def of(cls, call: Call) -> Planned:
        return cls(call, _offset(call), _mask(call))


@dataclass
class Slots:
    """The slots of one model's caches: each slot's length and which are free."""

    lengths: list[int] = field(default_factory=list)
    free: list[int] = field(default_factory=list)  # a heap: the lowest free slot goes first
    caches: list[SlotKVCache] = field(default_factory=list)
    active: Planned | None = None  # what the next forward pass reads

    @classmethod
    def for_layers(cls, layers: int) -> Slots:
        slots = cls()
        slots.caches = [SlotKVCache(slots) for _ in range(layers)]
        return slots

    @property
    def used(self) -> int:
        return len(self.lengths) - len(self.free)

    def take(self) -> int:
        """A free slot, the lowest one (decode steps read slots up to the highest used)."""
        if self.free:
            return heapq.heappop(self.free)
        self.lengths.append(0)
        return len(self.lengths) - 1

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0
        heapq.heappush(self.free, slot)

    def prepare(self, rows: Sequence[int], width: int) -> Planned:
        """A call reading `width` tokens for each of `rows` from their lengths on."""
        return Planned.of(Call(tuple(rows), tuple(self.lengths[r] for r in rows), width))

    def activate(self, planned: Planned) -> None:
        self.active = planned

    def plan(self, rows: Sequence[int], width: int) -> None:
        """The next forward reads `width` tokens for each of `rows` from their lengths on."""
        self.activate(self.prepare(rows, width))

    def advance(self, rows: Sequence[int], counts: Sequence[int]) -> None:
        """The tokens the last call wrote for real: each row's length grows by its count."""
        for row, count in zip(rows, counts, strict=True):
            self.lengths[row] += count

    def extract(self, slot: int) -> list[KVCache]:
        """A copy of one slot's history as mlx-lm's caches (for the prefix cache)."""
        length = self.lengths[slot]
        out = []
        for cache in self.caches:
            own = KVCache()
            if cache.keys is not None and length:
                own.state = (*cache.copy(slot, length), length)
            out.append(own)
        return out

    def copy(self, source: int, target: int, length: int) -> None:
        """The first `length` positions of slot `source` into slot `target` (copied out and
        computed first: a write from the store into itself would copy the whole store)."""
        parts = [cache.copy(source, length) for cache in self.caches]
        mx.eval(parts)
        for cache, (keys, values) in zip(self.caches, parts, strict=True):
            cache.place(target, keys, values)
        self.lengths[target] = length

    def write(self, slot: int, prefix: Sequence[Any]) -> None:
        """mlx-lm's caches of a prompt's start (from the prefix cache) into `slot`."""
        length = prefix[0].offset
        for cache, source in zip(self.caches, prefix, strict=True):
            cache.place(slot, source.keys[..., :length, :], source.values[..., :length, :])
        self.lengths[slot] = length

    def arrays(self) -> list[mx.array]:
        return [a for cache in self.caches for a in cache.state if a is not None]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays())


class SlotKVCache:
    """One layer's keys and values, slot by slot (module docstring)."""

    def __init__(self, slots: Slots):
        self.slots = slots
        self.keys: mx.array | None = None
        self.values: mx.array | None = None

    @property
    def offset(self) -> Any:
        """Where each row's new tokens go: rotary embeddings start there."""
        return self._active().offset

    def _active(self) -> Planned:
        active = self.slots.active
        assert active is not None, "a forward pass over slot caches needs a planned call"
        return active

    @property
    def state(self) -> tuple[Any, Any]:
        return self.keys, self.values

    def is_trimmable(self) -> bool:
        return False

    def make_mask(self, n: int, return_array: bool = False, **kwargs: Any) -> Any:
        active = self._active()
        call, mask = active.call, active.mask
        assert call.width == n, "the call was planned for this input"
        if kwargs.get("window_size"):
            raise ValueError("slot caches hold full attention only")
        if return_array and not isinstance(mask, mx.array):
            return _array_mask(call)
        return mask

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        call = self._active().call
        self._reserve(keys, values, max(call.rows) + 1, call.end)
        assert self.keys is not None and self.values is not None
        span, end = call.span, call.end
        if span is not None and call.uniform:  # one slice takes every write
            a, b = span
            p = call.starts[0]
            self.keys[a:b, :, p:end, :] = keys
            self.values[a:b, :, p:end, :] = values
        else:
            rows, positions = _scatter_index(call)
            heads = mx.arange(keys.shape[1])[None, :]
            self.keys[rows, heads, positions] = _by_token(keys)
            self.values[rows, heads, positions] = _by_token(values)
        if span is not None:
            a, b = span
            return self.keys[a:b, :, :end, :], self.values[a:b, :, :end, :]
        index = mx.array(call.rows)
        return self.keys[index, :, :end, :], self.values[index, :, :end, :]

    def copy(self, slot: int, length: int) -> tuple[mx.array, mx.array]:
        """Slot `slot`'s first `length` positions, in arrays of their own (a view would keep
        the whole store alive and make every later write copy it)."""
        assert self.keys is not None and self.values is not None
        keys = mx.contiguous(self.keys[slot : slot + 1, :, :length, :])
        values = mx.contiguous(self.values[slot : slot + 1, :, :length, :])
        return keys, values

    def place(self, slot: int, keys: mx.array, values: mx.array) -> None:
        length = keys.shape[2]
        self._reserve(keys, values, slot + 1, length)
        assert self.keys is not None and self.values is not None
        self.keys[slot : slot + 1, :, :length, :] = keys
        self.values[slot : slot + 1, :, :length, :] = values

    def _reserve(self, keys: mx.array, values: mx.array, rows: int, positions: int) -> None:
        """Room for `rows` slots of `positions` positions, grown by whole blocks."""
        if self.keys is None or self.values is None:
            shape = (_round(rows, SLOT_BLOCK), keys.shape[1], _round(positions, BLOCK))
            self.keys = mx.zeros((*shape, keys.shape[3]), keys.dtype)
            self.values = mx.zeros((*shape, values.shape[3]), values.dtype)
            return
        have_rows, _, have_positions, _ = self.keys.shape
        if positions > have_positions:
            more = _round(positions, BLOCK) - have_positions
            self.keys = _grow(self.keys, 2, more)
            self.values = _grow(self.values, 2, more)
        if rows > have_rows:
            more = _round(rows, SLOT_BLOCK) - have_rows
            self.keys = _grow(self.keys, 0, more)
            self.values = _grow(self.values, 0, more)


def _round(n: int, block: int) -> int:
    return max(block, -(-n // block) * block)


def _grow(a: mx.array, axis: int, more: int) -> mx.array:
    shape = list(a.shape)
    shape[axis] = more
    return mx.concatenate([a, mx.zeros(shape, a.dtype)], axis=axis)


def _by_token(t: mx.array) -> mx.array:
    """(rows, heads, width, dim) as (rows * width, heads, dim): one entry per token."""
    rows, heads, width, dim = t.shape
    return t.transpose(0, 2, 1, 3).reshape(rows * width, heads, dim)


def _scatter_index(call: Call) -> tuple[mx.array, mx.array]:
    """Per token of the call, its slot and position, as (tokens, 1) columns."""
    steps = mx.arange(call.width)
    rows = mx.repeat(mx.array(call.rows), call.width)
    positions = (mx.array(call.starts)[:, None] + steps[None, :]).reshape(-1)
    return rows[:, None], positions[:, None]


def _offset(call: Call) -> Any:
    if call.uniform:
        return call.starts[0]
    return mx.array(call.starts)


def _mask(call: Call) -> Any:
    """None where every query may see every key it is given, "causal" for one row's chunk,
    else a boolean (rows, 1, width, end) array: a query sees its own slot's keys up to its own
    position."""
    if call.uniform:
        return "causal" if call.width > 1 else None
    return _array_mask(call)


def _array_mask(call: Call) -> mx.array:
    queries = mx.array(call.starts)[:, None] + mx.arange(call.width)[None, :]
    keys = mx.arange(call.end)
    return (keys[None, None, :] <= queries[:, :, None])[:, None, :, :]
