"""How a step turns logits into tokens, row by row: each row's logits processors, the
constrained rows' masks, the samplers, and the scores of the rows that asked for them.

Both generators use it (`generator.py`, and `batch.py` for the models it serves): a row is a
position in the step's logits, and every list below holds one entry per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import TokenBuffer

from .constraints import Guide, mask_guided_rows
from .logprobs import RowScores, score_rows


def process_rows(
    logits: mx.array,
    inputs: mx.array,
    processors: Sequence[Sequence[Any] | None],
    contexts: Sequence[TokenBuffer | None],
) -> tuple[mx.array, list[mx.array]]:
    """Each row's logits processors, its context updated with the token the step read; the
    constrained rows' guides go last, all at once (they need the tokens sampled last, so a
    step with guides waits for them here). The logits, and the contexts to evaluate."""
    rows: list[mx.array] = []
    token_context: list[mx.array] = []
    guided: list[tuple[int, Guide]] = []
    for e, own in enumerate(processors):
        row = logits[e : e + 1]
        own = own or ()
        guided.extend((e, p) for p in own if isinstance(p, Guide))
        others = [p for p in own if not isinstance(p, Guide)]
        context = contexts[e]
        if others and context is not None:
            fetched = context.update_and_fetch(inputs[e : e + 1])
            token_context.append(fetched)
            for processor in others:
                row = processor(fetched, row)
        rows.append(row)
    if token_context:  # some row has processors of its own
        logits = mx.concatenate(rows, axis=0)
    if guided:  # start the forward pass, then compute the masks while it runs
        mx.async_eval(logits)
        tokens: list[int] = inputs.tolist()  # type: ignore[assignment]
        for e, guide in guided:
            guide.advance(tokens[e])
        guided = [(e, guide) for e, guide in guided if not guide.waiting]
        if guided:
            logits = mask_guided_rows(logits, guided)
    return logits, token_context


def sample_rows(logits: mx.array, samplers: Sequence[Any]) -> mx.array:
    """One call per distinct sampler object, on the rows that hold it: a step of many
    requests with shared settings and a few with their own (seeded) samplers costs one call
    per group, not one per row."""
    if all(s is samplers[0] for s in samplers):
        return samplers[0](logits)
    groups: dict[int, list[int]] = {}
    for e, s in enumerate(samplers):
        groups.setdefault(id(s), []).append(e)
    outputs, order = [], []
    for rows in groups.values():
        picked = logits[rows[0] : rows[0] + 1] if len(rows) == 1 else logits[mx.array(rows)]
        outputs.append(samplers[rows[0]](picked))
        order.extend(rows)
    sampled = mx.concatenate(outputs, axis=0)
    if order == sorted(order):
        return sampled
    back = [0] * len(order)  # position in `sampled` of each row
    for position, row in enumerate(order):
        back[row] = position
    return sampled[mx.array(back)]


def score_asked(
    logits: mx.array, sampled: mx.array, asked: list[tuple[int, int]], size: int
) -> list[RowScores | None]:
    """Lazy scores of a step's sampled tokens for the rows `asked` ((row, k) pairs) of `size`
    rows; None for the others."""
    if not asked:
        return [None] * size
    if len(asked) < size:
        rows = mx.array([e for e, _ in asked])
        logits, sampled = logits[rows], sampled[rows]
    return score_rows(logits, sampled, asked, size)
