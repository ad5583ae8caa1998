# mlx-lm declares the cache's keys and values Optional; the rows placed here have content.
# mypy: disable-error-code="index"
"""Rows of mlx-lm's BatchKVCache reused in place: a new sequence's keys and values are written
into the row of one that ended, instead of the batch being cut and concatenated.

mlx-lm's batch cache keeps every row right-aligned at a shared end (`cache_end`), each row's
history starting at its `left_padding` (attention masks what lies before it). A row of length
L fits any slot when L <= end: its keys go to [end - L, end) and its left padding becomes
end - L. Only that row's data is copied; cutting rows out (`filter`) and appending them
(`extend`) each copy the whole batch's cache, layer by layer.

Rows that ended are given an empty history (left padding = end), so that the oldest live
row alone decides how much of the shared length can be trimmed (`trim_left`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache

from .mlx_lm_internals import cache_end, set_cache_end

TRIM_AT = 64  # trim the shared length once every row has at least this much padding


def reusable(caches: Sequence[Any], incoming: Sequence[Any]) -> bool:
    """Whether rows of `incoming` can be placed into rows of `caches` (plain batch caches on
    both sides, with content)."""
    return bool(caches) and all(
        type(c) is BatchKVCache and type(o) is BatchKVCache and c.keys is not None
        and o.keys is not None
        for c, o in zip(caches, incoming, strict=True)
    )  # fmt: skip


def row_lengths(cache: BatchKVCache) -> list[int]:
    """The length of each row's history (a sync on its left padding)."""
    return cast(list[int], (cache_end(cache) - cache.left_padding).tolist())


def place_rows(
    cache: BatchKVCache, incoming: BatchKVCache, slots: Sequence[int], lengths: Sequence[int]
) -> None:
    """Row j of `incoming` (its last `lengths[j]` positions) into row `slots[j]` of `cache`."""
    end, source_end = cache_end(cache), cache_end(incoming)
    for j, (slot, length) in enumerate(zip(slots, lengths, strict=True)):
        target, source = slice(end - length, end), slice(source_end - length, source_end)
        cache.keys[slot : slot + 1, :, target, :] = incoming.keys[j : j + 1, :, source, :]
        cache.values[slot : slot + 1, :, target, :] = incoming.values[j : j + 1, :, source, :]
    rows = mx.array(list(slots))
    sizes = mx.array(list(lengths), dtype=cache.left_padding.dtype)
    cache.left_padding[rows] = end - sizes
    cache.offset[rows] = sizes.astype(cache.offset.dtype)


def empty_rows(cache: BatchKVCache, rows: Sequence[int]) -> None:
    """Rows whose sequences ended: no history left to attend to or to keep."""
    if type(cache) is BatchKVCache and rows:
        cache.left_padding[mx.array(list(rows))] = cache_end(cache)


def trim_left(caches: Sequence[Any]) -> None:
    """Drop the positions before every row's history (mlx-lm's `filter` does it when rows
    leave); one sync on the left padding."""
    if not reusable(caches, caches):
        return
    shift = min(caches[0].left_padding.tolist())
    if shift < TRIM_AT:
        return
    for cache in caches:
        cache.keys = cache.keys[..., shift:, :]
        cache.values = cache.values[..., shift:, :]
        set_cache_end(cache, cache_end(cache) - shift)
        cache.left_padding = cache.left_padding - shift
