"""What one step of the generation loop does: a pure plan, decided from counts only.

Each step decodes every running row and reads prompt chunks under a token budget. Prompts wait
to be admitted (given a slot) in groups: a pass over the weights costs about the same for one
prompt as for several, so while rows decode, a prompt waits until a group is waiting
(`Limits.group`, or as many as there are free rows) or the oldest has waited
`Limits.wait_steps` decode steps; with nothing decoding it is admitted at once. Admitted
prompts are read chunk by chunk, oldest first, each chunk at most `Limits.chunk` tokens, all
of a step's chunks at most `Limits.budget` tokens.

The plan never looks at a clock: ranks of a distributed model replay the same inputs and get
the same plans (peers.py). The n choices of one request are one waiting prompt that needs n
rows; warm-up rounds and prefix-cache hits are ordinary waiting prompts (a hit has fewer
tokens to read).
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
    rows: int = 1  # the choices that start from it (a request's n)
    until: int | None = None  # tokens before the next segment's end: no chunk crosses it


@dataclass(frozen=True)
class Reading:
    """An admitted prompt with `left` tokens still to read."""

    uid: int
    left: int
    rows: int = 1
    until: int | None = None


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
    admit = _admit(steps, decoding, reading, waiting, limits)
    taken = {w.uid: (w.tokens, w.until) for w in waiting if w.uid in admit}
    queue = [(r.uid, r.left, r.until) for r in reading] + [(uid, *taken[uid]) for uid in admit]
    return Plan(decoding > 0, admit, _chunks(queue, limits))


def _admit(
    steps: int,
    decoding: int,
    reading: Sequence[Reading],
    waiting: Sequence[Waiting],
    limits: Limits,
) -> tuple[int, ...]:
    """The waiting prompts to admit now, oldest first, while their rows fit (class docstring).
    A prompt with more choices than the engine has rows is admitted alone, into an idle one."""
    rows = decoding + sum(r.rows for r in reading)
    group = limits.group - len(reading)
    taken: list[int] = []
    for w in waiting[: max(0, group)]:
        if rows + w.rows > limits.rows and rows > 0:
            break
        taken.append(w.uid)
        rows += w.rows
    if not taken:
        return ()
    # A whole group, or no more could come in.
    full = len(taken) == group or len(taken) < len(waiting) or rows >= limits.rows
    waited = steps - waiting[0].arrived
    if decoding == 0 or reading or full or waited >= limits.wait_steps:
        return tuple(taken)
    return ()


def _chunks(
    queue: Sequence[tuple[int, int, int | None]], limits: Limits
) -> tuple[tuple[int, int], ...]:
    """Chunks of the prompts in `queue`, oldest first, under the step's token budget (the
    oldest prompt is always read: a budget below one chunk still moves it on); none crosses
    the end of a segment."""
    out: list[tuple[int, int]] = []
    left = limits.budget
    for uid, tokens, until in queue:
        n = min(tokens, limits.chunk, left if out else limits.chunk)
        n = n if until is None else min(n, until)
        if n <= 0:
            break
        out.append((uid, n))
        left -= n
    return tuple(out)
