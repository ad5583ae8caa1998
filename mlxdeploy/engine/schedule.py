"""What one step of the generation loop does: a pure plan, decided from counts only.

Each step decodes every running row and reads prompt chunks under a token budget. Prompts wait
to be admitted (given a slot) in groups: a pass over the weights costs about the same for one
prompt as for several, so while rows decode, a prompt waits until a group is waiting
(`Limits.group`, or as many as there are free rows) or the oldest has waited
`Limits.wait_steps` decode steps; with nothing decoding it is admitted at once. Admitted
prompts are read chunk by chunk, oldest first, each chunk at most `Limits.chunk` tokens, all
of a step's chunks at most `Limits.budget` tokens.

The plan never looks at a clock: ranks of a distributed model replay the same inputs and get
the same plans (peers.py). The n choices of one request, warm-up rounds and prefix-cache hits
are ordinary waiting prompts (with fewer tokens to read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Waiting:
    """A prompt not yet admitted: `tokens` still to read, `arrived` the decode steps run when
    it came."""

    uid: int
    tokens: int
    arrived: int


@dataclass(frozen=True)
class Reading:
    """An admitted prompt with `left` tokens still to read."""

    uid: int
    left: int


@dataclass(frozen=True)
class Limits:
    rows: int  # most requests decoding or reading at once
    group: int  # most prompts read at once
    chunk: int  # most tokens of one prompt read in one step
    budget: int  # most prompt tokens read in one step
    wait_steps: int  # decode steps a prompt may wait for others to be read with it


@dataclass(frozen=True)
class Plan:
    decode: bool  # the running rows take a step
    admit: tuple[int, ...] = ()  # waiting prompts given a slot, in order
    chunks: tuple[tuple[int, int], ...] = ()  # (uid, tokens) read this step, in order


def plan(
    steps: int,
    decoding: int,
    reading: Sequence[Reading],
    waiting: Sequence[Waiting],
    limits: Limits,
) -> Plan:
    """The plan of the step after `steps` decode steps, with `decoding` rows running."""
    admit = _admit(steps, decoding, len(reading), waiting, limits)
    taken = {w.uid: w.tokens for w in waiting if w.uid in admit}
    queue = [(r.uid, r.left) for r in reading] + [(uid, taken[uid]) for uid in admit]
    return Plan(decoding > 0, admit, _chunks(queue, limits))


def _admit(
    steps: int, decoding: int, reading: int, waiting: Sequence[Waiting], limits: Limits
) -> tuple[int, ...]:
    room = min(limits.group - reading, limits.rows - decoding - reading)
    n = min(room, len(waiting))
    if n <= 0:
        return ()
    waited = steps - waiting[0].arrived
    if decoding == 0 or reading > 0 or n >= room or waited >= limits.wait_steps:
        return tuple(w.uid for w in waiting[:n])
    return ()


def _chunks(queue: Sequence[tuple[int, int]], limits: Limits) -> tuple[tuple[int, int], ...]:
    """Chunks of the prompts in `queue`, oldest first, under the step's token budget (the
    oldest prompt is always read: a budget below one chunk still moves it on)."""
    out: list[tuple[int, int]] = []
    left = limits.budget
    for uid, tokens in queue:
        n = min(tokens, limits.chunk, left if out else limits.chunk)
        if n <= 0:
            break
        out.append((uid, n))
        left -= n
    return tuple(out)
