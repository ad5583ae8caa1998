"""What speculating costs on this machine, timed at load: the adaptive draft depth's prices
(`draft_depth.Measured`).

At a few batch sizes, one pass of the model reading 1, 2, 3, 5, 9 and 17 tokens a row (as many
as a verification there may read: `speculative.depth`) and one pass of the draft reading a
token a row, each after a short context, on mlx-lm's plain caches. Each shape runs once untimed
first (on a GPU its first call compiles kernels), then in rounds that time every pass once, and
each pass's fastest counts (the machine's other load falls on all of them alike). Prices are
relative to the model's pass reading one token a row at the same batch, and held to what
cannot be noise: a pass reading more tokens costs at least as much as one reading fewer, and
a draft pass at least its weight bytes' share of the model's (`draft_depth.draft_cost`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from .draft_depth import Measured
from .speculative import DRAFT_BUDGET

BATCHES = (1, 4, 16)  # rows a step, where passes are timed
WIDTHS = (1, 2, 3, 5, 9, 17)  # tokens a row a timed pass of the model reads
CONTEXT = 32  # tokens each row holds before a timed pass
RUNS = 3  # timed rounds of the passes, after an untimed one


def measure(model: Any, draft: Any, most: int, floor: float) -> Measured:
    """The prices of guessing up to `most` tokens a row; `floor`: a draft pass's least cost
    in passes of the model."""
    batches = [b for b in BATCHES if DRAFT_BUDGET // b >= 1]
    drafts, verifies = [], []
    for rows in batches:
        deepest = min(most, DRAFT_BUDGET // rows)
        widths = sorted({w for w in WIDTHS if w <= deepest + 1} | {deepest + 1})
        times = _fastest([(model, w) for w in widths] + [(draft, 1)], rows)
        plain = times[0]
        drafts.append(max(times[-1] / plain, floor))
        timed = dict(zip(widths, times[:-1], strict=True))
        verifies.append(_rising([_between(timed, k + 1) / plain for k in range(deepest + 1)]))
    return Measured(tuple(batches), tuple(drafts), tuple(verifies))


def _fastest(passes: list[tuple[Any, int]], rows: int) -> list[float]:
    """Seconds of each pass (a model, tokens read a row) over `rows` rows: the fastest of
    RUNS rounds that time each once (the machine's other load falls on all of them alike),
    after a round untimed."""
    caches = []
    for model, _ in passes:
        cache = make_prompt_cache(model)
        mx.eval(model(_tokens(rows, CONTEXT), cache=cache))
        caches.append(cache)
    best = [float("inf")] * len(passes)
    for round_ in range(RUNS + 1):
        for i, ((model, width), cache) in enumerate(zip(passes, caches, strict=True)):
            tokens = _tokens(rows, width)
            start = time.perf_counter()
            mx.eval(model(tokens, cache=cache))
            if round_:
                best[i] = min(best[i], time.perf_counter() - start)
            for layer in cache:
                layer.trim(width)
    return best


def _between(times: dict[int, float], width: int) -> float:
    """The time of a pass reading `width` tokens a row, interpolated between those timed."""
    if width in times:
        return times[width]
    below = max(w for w in times if w < width)
    above = min(w for w in times if w > width)
    share = (width - below) / (above - below)
    return times[below] + share * (times[above] - times[below])


def _rising(prices: Sequence[float]) -> tuple[float, ...]:
    """Each price at least 1 (a plain pass) and at least the one before it."""
    out: list[float] = []
    for price in prices:
        out.append(max(price, out[-1] if out else 1.0))
    out[0] = 1.0
    return tuple(out)


def _tokens(rows: int, width: int) -> mx.array:
    return (mx.arange(rows * width, dtype=mx.uint32) % 1000).reshape(rows, width)


def describe(prices: Measured) -> str:
    """One line for the log: a draft pass and the deepest verification, at each batch."""
    parts = [
        f"batch {rows}: a draft pass {draft:.2f}, reading {len(verify)} tokens {verify[-1]:.2f}"
        for rows, draft, verify in zip(prices.rows, prices.draft, prices.verify, strict=True)
    ]
    return "speculation priced in plain passes of the model; " + "; ".join(parts)
