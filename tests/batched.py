"""Driving a `SlotGenerator` the way the batching tests do: half the prompts at once, the
rest while those decode (so they are read inside decode steps), greedy."""

from __future__ import annotations

from typing import Any

from mlxdeploy.engine.batch import FastBatchGenerator
from mlxdeploy.engine.generator import SlotGenerator
from mlxdeploy.engine.sampling import greedy


def batched(
    generator: SlotGenerator | FastBatchGenerator,
    prompts: list[list[int]],
    lengths: list[int],
    **extra: Any,
) -> list[list[int]]:
    """Half the prompts at once, the rest while those decode."""
    half = len(prompts) // 2
    uids: list[int] = []
    out: dict[int, list[int]] = {}
    ended: set[int] = set()
    steps = 0
    while len(ended) < len(prompts):
        if steps in (0, 3):
            part = slice(None, half) if steps == 0 else slice(half, None)
            kwargs = {key: value[part] for key, value in extra.items()}
            new = generator.insert_segments(
                [[p] for p in prompts[part]], max_tokens=lengths[part],
                samplers=[greedy] * len(prompts[part]), **kwargs,
            )  # fmt: skip
            uids += new
            out.update({u: [] for u in new})
        _, responses = generator.next()
        for r in responses:
            out[r.uid].append(r.token)
            if r.finish_reason is not None:
                ended.add(r.uid)
        steps += 1
    return [out[u] for u in uids]
