"""Where the caches of the requests being served live: one slot per request, never copied
whole.

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
`update_and_fetch`, `make_mask`), so the models run unchanged. Layers that keep state arrays
instead (a convolution's last inputs, a linear-attention or SSM state: mlx-lm's `ArraysCache`)
get `SlotArraysCache`: one row of each array per slot, read and written back by each call.
Sliding-window layers get `SlotRingCache`: a ring per slot, a window and a chunk long.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import (
    ArraysCache,
    CacheList,
    KVCache,
    RotatingKVCache,
    make_prompt_cache,
)

BLOCK = 256  # positions are added in blocks of this many
SLOT_BLOCK = 8  # slots are added in blocks of this many


@dataclass(frozen=True)
class Call:
    """One forward pass over `rows` (slots), each with `width` input tokens starting at its
    position in `starts` (its length before the call)."""

    rows: tuple[int, ...]
    starts: tuple[int, ...]
    width: int
    counts: tuple[int, ...] = ()  # real tokens per row, when some rows are right-padded

    @property
    def padded(self) -> bool:
        return any(n < self.width for n in self.counts)

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
    caches: list[SlotCache] = field(default_factory=list)
    active: Planned | None = None  # what the next forward pass reads
    # Some layer keeps a state that every token read changes: a decode step must not read a
    # slot whose prompt is still being read.
    stateful: bool = False

    @classmethod
    def for_model(
        cls, model: Any, chunk: int, full: Callable[[Slots], SlotCache] | None = None
    ) -> Slots:
        """Slot caches in place of the model's own (`kinds` says which it can have); `chunk`:
        the most tokens of one row a call reads (a sliding window's ring holds that many
        beyond the window); `full`: what holds a full-attention layer (default
        `SlotKVCache`; `quantized_slots.py` keeps them quantized)."""
        slots = cls()
        make = full or SlotKVCache
        caches = make_prompt_cache(model)
        slots.caches = [_slot_cache(slots, c, chunk, make) for c in caches]
        slots.stateful = any(_stateful(c) for c in slots.caches)
        return slots

    def empty(self) -> Slots:
        """The same caches with nothing in them."""
        slots = Slots(stateful=self.stateful)
        slots.caches = [type(c).like(slots, c) for c in self.caches]
        return slots

    @property
    def used(self) -> int:
        return len(self.lengths) - len(self.free)

    def take(self) -> int:
        """A free slot, the lowest one (decode steps read slots up to the highest used), with
        no state."""
        if self.free:
            slot = heapq.heappop(self.free)
        else:
            self.lengths.append(0)
            slot = len(self.lengths) - 1
        for cache in self.caches:
            cache.reset(slot)
        return slot

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0
        heapq.heappush(self.free, slot)

    def prepare(self, rows: Sequence[int], width: int, counts: Sequence[int] = ()) -> Planned:
        """A call reading `width` tokens for each of `rows` from their lengths on; `counts`:
        the real tokens of each row, when some are right-padded."""
        starts = tuple(self.lengths[r] for r in rows)
        return Planned.of(Call(tuple(rows), starts, width, tuple(counts)))

    def activate(self, planned: Planned) -> None:
        self.active = planned

    def plan(self, rows: Sequence[int], width: int, counts: Sequence[int] = ()) -> None:
        """The next forward reads `width` tokens for each of `rows` from their lengths on."""
        self.activate(self.prepare(rows, width, counts))

    def advance(self, rows: Sequence[int], counts: Sequence[int]) -> None:
        """The tokens the last call wrote for real: each row's length grows by its count."""
        for row, count in zip(rows, counts, strict=True):
            self.lengths[row] += count

    def extract(self, slot: int) -> list[Any]:
        """A copy of one slot's history as mlx-lm's caches (for the prefix cache)."""
        return [cache.extract(slot, self.lengths[slot]) for cache in self.caches]

    def copy(self, source: int, target: int, length: int) -> None:
        """The first `length` positions of slot `source` into slot `target` (copied out and
        computed first: a write from the store into itself would copy the whole store)."""
        parts = [cache.copy(source, length) for cache in self.caches]
        mx.eval(_arrays_in(parts))
        for cache, part in zip(self.caches, parts, strict=True):
            cache.place(target, part, length)
        self.lengths[target] = length

    def write(self, slot: int, prefix: Sequence[Any], length: int) -> None:
        """mlx-lm's caches of a prompt's first `length` tokens (from the prefix cache) into
        `slot`."""
        for cache, source in zip(self.caches, prefix, strict=True):
            cache.place(slot, cache.parts_of(source, length), length)
        self.lengths[slot] = length

    def arrays(self) -> list[mx.array]:
        return [a for cache in self.caches for a in cache.arrays()]


class SlotCache:
    """One layer's part of every slot."""

    def __init__(self, slots: Slots):
        self.slots = slots

    @classmethod
    def like(cls, slots: Slots, other: SlotCache) -> SlotCache:
        return cls(slots)

    def _active(self) -> Planned:
        active = self.slots.active
        assert active is not None, "a forward pass over slot caches needs a planned call"
        return active

    def arrays(self) -> list[mx.array]:
        raise NotImplementedError

    def reset(self, slot: int) -> None:
        """A slot taken by a new request: no history."""

    def extract(self, slot: int, length: int) -> Any:
        """mlx-lm's cache of the slot's first `length` positions, in arrays of its own."""
        raise NotImplementedError

    def copy(self, slot: int, length: int) -> list[mx.array]:
        """The slot's first `length` positions, in arrays of their own (a view would keep the
        whole store alive and make every later write copy it)."""
        raise NotImplementedError

    def parts_of(self, cache: Any, length: int) -> list[mx.array]:
        """What `place` takes, from mlx-lm's cache of `length` tokens."""
        raise NotImplementedError

    def place(self, slot: int, parts: list[mx.array], length: int) -> None:
        """`parts` (from `copy` or `parts_of`) as the slot's history of `length` tokens."""
        raise NotImplementedError


class SlotKeysCache(SlotCache):
    """What every cache of keys and values answers mlx-lm's attention modules alike."""

    keys: Any
    values: Any

    @property
    def offset(self) -> Any:
        """Where each row's new tokens go: rotary embeddings start there."""
        return self._active().offset

    @property
    def state(self) -> tuple[Any, Any]:
        return self.keys, self.values

    def is_trimmable(self) -> bool:
        return False


class SlotKVCache(SlotKeysCache):
    """One layer's keys and values, slot by slot (module docstring)."""

    def __init__(self, slots: Slots):
        super().__init__(slots)
        self.keys: mx.array | None = None
        self.values: mx.array | None = None

    def arrays(self) -> list[mx.array]:
        return [a for a in (self.keys, self.values) if a is not None]

    def extract(self, slot: int, length: int) -> KVCache:
        own = KVCache()
        if self.keys is not None and length:
            own.state = (*self.copy(slot, length), length)
        return own

    def parts_of(self, cache: Any, length: int) -> list[mx.array]:
        return [cache.keys[..., :length, :], cache.values[..., :length, :]]

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
        write_rows(self.keys, call, keys)
        write_rows(self.values, call, values)
        return read_rows(self.keys, call), read_rows(self.values, call)

    def copy(self, slot: int, length: int) -> list[mx.array]:
        assert self.keys is not None and self.values is not None
        keys = mx.contiguous(self.keys[slot : slot + 1, :, :length, :])
        values = mx.contiguous(self.values[slot : slot + 1, :, :length, :])
        return [keys, values]

    def place(self, slot: int, parts: list[mx.array], length: int) -> None:
        keys, values = parts
        length = keys.shape[2]
        if not length:
            return
        self._reserve(keys, values, slot + 1, length)
        assert self.keys is not None and self.values is not None
        self.keys[slot : slot + 1, :, :length, :] = keys
        self.values[slot : slot + 1, :, :length, :] = values

    def _reserve(self, keys: mx.array, values: mx.array, rows: int, positions: int) -> None:
        """Room for `rows` slots of `positions` positions, grown by whole blocks."""
        if self.keys is None or self.values is None:
            shape = (round_up(rows, SLOT_BLOCK), keys.shape[1], round_up(positions, BLOCK))
            self.keys = mx.zeros((*shape, keys.shape[3]), keys.dtype)
            self.values = mx.zeros((*shape, values.shape[3]), values.dtype)
            return
        have_rows, _, have_positions, _ = self.keys.shape
        if positions > have_positions:
            more = round_up(positions, BLOCK) - have_positions
            self.keys = grow(self.keys, 2, more)
            self.values = grow(self.values, 2, more)
        if rows > have_rows:
            more = round_up(rows, SLOT_BLOCK) - have_rows
            self.keys = grow(self.keys, 0, more)
            self.values = grow(self.values, 0, more)


class SlotRingCache(SlotKVCache):
    """One sliding-window layer's keys and values: each slot a ring of `window + chunk`
    positions, position p at index p % ring. A call reads at most `chunk` tokens of a row, so
    it never overwrites a key one of its queries still sees; the mask finds the position each
    index holds (the latest written there) and lets a query see it only within its window."""

    def __init__(self, slots: Slots, window: int, chunk: int):
        super().__init__(slots)
        self.window, self.ring = window, window + chunk

    @classmethod
    def like(cls, slots: Slots, other: SlotCache) -> SlotCache:
        assert isinstance(other, SlotRingCache)
        return cls(slots, other.window, other.ring - other.window)

    def make_mask(self, n: int, return_array: bool = False, **kwargs: Any) -> Any:
        return _ring_mask(self._active().call, self.window, self.ring)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        call = self._active().call
        assert call.width <= self.ring - self.window, "a chunk longer than the ring allows"
        self._reserve(keys, values, max(call.rows) + 1, self.ring)
        assert self.keys is not None and self.values is not None
        rows, positions = scatter_index(call)
        heads = mx.arange(keys.shape[1])[None, :]
        self.keys[rows, heads, positions % self.ring] = by_token(keys)
        self.values[rows, heads, positions % self.ring] = by_token(values)
        span, ring = call.span, self.ring
        if span is not None:
            a, b = span
            return self.keys[a:b, :, :ring], self.values[a:b, :, :ring]
        index = mx.array(call.rows)
        return self.keys[index, :, :ring], self.values[index, :, :ring]

    def extract(self, slot: int, length: int) -> Any:
        """mlx-lm's ring of the slot: its last window of keys, oldest first."""
        own = RotatingKVCache(max_size=self.window)
        if self.keys is not None and length:
            keys, values = self.copy(slot, length)
            # (keys, values, offset, keep, max_size, next index): a full ring, oldest first.
            own.state = (keys, values, length, 0, self.window, keys.shape[2])
        return own

    def copy(self, slot: int, length: int) -> list[mx.array]:
        """The slot's last min(length, window) positions, oldest first."""
        assert self.keys is not None and self.values is not None
        index = mx.array([p % self.ring for p in range(max(0, length - self.window), length)])
        return [mx.contiguous(a[slot : slot + 1][:, :, index]) for a in (self.keys, self.values)]

    def parts_of(self, cache: Any, length: int) -> list[mx.array]:
        """The keys of mlx-lm's ring that this class extracted (oldest first)."""
        keys, values, _, _, _, end = cache.state  # written up to `end` (a trim moves it back)
        held = min(length, self.window, end)
        return [keys[..., end - held : end, :], values[..., end - held : end, :]]

    def place(self, slot: int, parts: list[mx.array], length: int) -> None:
        keys, values = parts
        held = keys.shape[2]
        if not held:
            return
        self._reserve(keys, values, slot + 1, self.ring)
        assert self.keys is not None and self.values is not None
        index = mx.array([p % self.ring for p in range(length - held, length)])
        self.keys[slot : slot + 1, :, index] = keys
        self.values[slot : slot + 1, :, index] = values


class SlotArraysCache(SlotCache):
    """One layer's state arrays (a convolution's last inputs, a linear-attention or SSM
    state), one row per slot, in place of mlx-lm's `ArraysCache`. A call reads its rows' states
    and writes them back; `lengths` tells the layer how many of a right-padded row's tokens are
    real."""

    def __init__(self, slots: Slots, size: int):
        super().__init__(slots)
        self.store: list[mx.array | None] = [None] * size

    @classmethod
    def like(cls, slots: Slots, other: SlotCache) -> SlotCache:
        assert isinstance(other, SlotArraysCache)
        return cls(slots, len(other.store))

    @property
    def lengths(self) -> mx.array | None:
        call = self._active().call
        return mx.array(call.counts) if call.padded else None

    @property
    def left_padding(self) -> None:
        return None

    def advance(self, n: int) -> None:
        """Each call says its rows' real tokens (`lengths`): nothing to count down."""

    def make_mask(self, n: int) -> mx.array | None:
        lengths = self.lengths
        return None if lengths is None else mx.arange(n)[None] < lengths[:, None]

    def empty(self) -> bool:
        return self.store[0] is None

    def __getitem__(self, index: int) -> mx.array | None:
        store = self.store[index]
        if store is None:
            return None
        span, rows = self._active().call.span, self._active().call.rows
        if span is not None:
            return store[span[0] : span[1]]
        return store[mx.array(rows)]

    def __setitem__(self, index: int, value: mx.array) -> None:
        call = self._active().call
        self._reserve(index, value, max(call.rows) + 1)
        store = self.store[index]
        assert store is not None
        span = call.span
        if span is not None:
            store[span[0] : span[1]] = value
        else:
            store[mx.array(call.rows)] = value

    @property
    def state(self) -> list[mx.array]:
        return self.arrays()

    def arrays(self) -> list[mx.array]:
        return [a for a in self.store if a is not None]

    def reset(self, slot: int) -> None:
        """No state, in a store with room for the slot (a state is read before it is
        written: the store must hold every slot a call reads)."""
        for index, store in enumerate(self.store):
            if store is not None:
                self._reserve(index, store, slot + 1)
                grown = self.store[index]
                assert grown is not None
                grown[slot] = 0

    def extract(self, slot: int, length: int) -> ArraysCache:
        own = ArraysCache(len(self.store))
        for i, part in enumerate(self._parts(slot)):
            own[i] = part
        return own

    def copy(self, slot: int, length: int) -> list[Any]:
        return self._parts(slot)

    def _parts(self, slot: int) -> list[mx.array | None]:
        return [None if s is None else mx.contiguous(s[slot : slot + 1]) for s in self.store]

    def parts_of(self, cache: Any, length: int) -> list[Any]:
        return [cache[i] for i in range(len(self.store))]

    def place(self, slot: int, parts: list[Any], length: int) -> None:
        """Each array of `parts` in its place (None: that array holds nothing yet)."""
        for index, part in enumerate(parts):
            if part is None:
                continue
            self._reserve(index, part, slot + 1)
            store = self.store[index]
            assert store is not None
            store[slot : slot + 1] = part

    def _reserve(self, index: int, value: mx.array, rows: int) -> None:
        store = self.store[index]
        if store is None:
            shape = (round_up(rows, SLOT_BLOCK), *value.shape[1:])
            self.store[index] = mx.zeros(shape, value.dtype)
        elif rows > store.shape[0]:
            self.store[index] = grow(store, 0, round_up(rows, SLOT_BLOCK) - store.shape[0])


class SlotCacheList(SlotCache):
    """A layer with caches of several kinds (mlx-lm's `CacheList`: falcon_h1's state arrays
    beside its keys and values), each in slots."""

    def __init__(self, slots: Slots, parts: list[SlotCache]):
        super().__init__(slots)
        self.parts = parts

    @classmethod
    def like(cls, slots: Slots, other: SlotCache) -> SlotCache:
        assert isinstance(other, SlotCacheList)
        return cls(slots, [type(p).like(slots, p) for p in other.parts])

    def __getitem__(self, index: int) -> SlotCache:
        return self.parts[index]

    def arrays(self) -> list[mx.array]:
        return [a for part in self.parts for a in part.arrays()]

    def reset(self, slot: int) -> None:
        for part in self.parts:
            part.reset(slot)

    def extract(self, slot: int, length: int) -> CacheList:
        return CacheList(*(part.extract(slot, length) for part in self.parts))

    def copy(self, slot: int, length: int) -> list[Any]:
        return [part.copy(slot, length) for part in self.parts]

    def parts_of(self, cache: Any, length: int) -> list[Any]:
        return [part.parts_of(cache[i], length) for i, part in enumerate(self.parts)]

    def place(self, slot: int, parts: list[Any], length: int) -> None:
        for part, own in zip(self.parts, parts, strict=True):
            part.place(slot, own, length)


def held(caches: Sequence[Any]) -> list[mx.array]:
    """The arrays of mlx-lm caches that `Slots.extract` made."""
    out: list[mx.array] = []
    for cache in caches:
        if isinstance(cache, CacheList):
            out.extend(held(cache.caches))
            continue
        parts = cache.cache if isinstance(cache, ArraysCache) else (cache.keys, cache.values)
        out.extend(_arrays_in(parts))  # a quantized cache's keys: (data, scales, biases)
    return out


def kinds(model: Any) -> bool:
    """Whether every layer's cache is one slot storage holds: mlx-lm's plain `KVCache` (full
    attention), `RotatingKVCache` keeping no first tokens (a sliding window) or `ArraysCache`
    (state arrays)."""
    caches = make_prompt_cache(model)
    return bool(caches) and all(_holds(c) for c in caches)


def _holds(cache: Any) -> bool:
    if type(cache) is CacheList:
        return all(_holds(c) for c in cache.caches)
    if type(cache) is RotatingKVCache:
        return bool(cache.keep == 0)  # no first tokens kept past the window
    return type(cache) in (KVCache, ArraysCache)


def _slot_cache(
    slots: Slots, cache: Any, chunk: int, full: Callable[[Slots], SlotCache]
) -> SlotCache:
    if type(cache) is CacheList:
        parts = [_slot_cache(slots, c, chunk, full) for c in cache.caches]
        return SlotCacheList(slots, parts)
    if type(cache) is ArraysCache:
        return SlotArraysCache(slots, len(cache.cache))
    if type(cache) is RotatingKVCache:
        return SlotRingCache(slots, int(cache.max_size), chunk)
    return full(slots)


def _arrays_in(tree: Any) -> list[mx.array]:
    if isinstance(tree, mx.array):
        return [tree]
    if isinstance(tree, list | tuple):
        return [a for item in tree for a in _arrays_in(item)]
    return []


def _stateful(cache: SlotCache) -> bool:
    if isinstance(cache, SlotCacheList):
        return any(_stateful(p) for p in cache.parts)
    return isinstance(cache, SlotArraysCache)


def round_up(n: int, block: int) -> int:
    return max(block, -(-n // block) * block)


def grow(a: mx.array, axis: int, more: int) -> mx.array:
    shape = list(a.shape)
    shape[axis] = more
    return mx.concatenate([a, mx.zeros(shape, a.dtype)], axis=axis)


def write_rows(store: mx.array, call: Call, new: mx.array) -> None:
    """`new` (rows, heads, width, dim) into `store` at each row's slot and positions, in
    place."""
    span, end = call.span, call.end
    if span is not None and call.uniform:  # one slice takes every write
        a, b = span
        p = call.starts[0]
        store[a:b, :, p:end, :] = new
    else:
        rows, positions = scatter_index(call)
        heads = mx.arange(new.shape[1])[None, :]
        store[rows, heads, positions] = by_token(new)


def read_rows(store: mx.array, call: Call) -> mx.array:
    """The call's rows of `store`, up to the end of its keys: a slice when they are
    consecutive."""
    span, end = call.span, call.end
    if span is not None:
        a, b = span
        return store[a:b, :, :end, :]
    return store[mx.array(call.rows), :, :end, :]


def by_token(t: mx.array) -> mx.array:
    """(rows, heads, width, dim) as (rows * width, heads, dim): one entry per token."""
    rows, heads, width, dim = t.shape
    return t.transpose(0, 2, 1, 3).reshape(rows * width, heads, dim)


def scatter_index(call: Call) -> tuple[mx.array, mx.array]:
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


def _ring_mask(call: Call, window: int, ring: int) -> mx.array:
    """(rows, 1, width, ring): query i of a row (position start + i) sees ring index j when
    the position j holds (the latest written there, up to the call's end) lies within its
    window and not after it."""
    starts = mx.array(call.starts)[:, None]
    queries = starts + mx.arange(call.width)[None]
    last = starts + call.width - 1
    held = last - mx.remainder(last - mx.arange(ring)[None], ring)
    held, queries = held[:, None, :], queries[:, :, None]
    seen = (held >= 0) & (held <= queries) & (held > queries - window)
    return seen[:, None]


def _array_mask(call: Call) -> mx.array:
    queries = mx.array(call.starts)[:, None] + mx.arange(call.width)[None, :]
    keys = mx.arange(call.end)
    return (keys[None, None, :] <= queries[:, :, None])[:, None, :, :]
