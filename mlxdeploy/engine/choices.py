"""The choices of one request on the event loop's side: where each choice's events go, how a
reader that fell behind takes them, and what the status page shows of a request."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from .api import Event, RequestInfo, RequestState, SamplingParams, Text
from .job import Job


@dataclass(frozen=True)
class ChoiceSink:
    """Where one choice's events go: its request's queue, tagged with the choice's index."""

    queue: asyncio.Queue[tuple[int, Event]]
    index: int

    def put_nowait(self, event: Event) -> None:
        self.queue.put_nowait((self.index, event))


def take_ready(
    queue: asyncio.Queue[tuple[int, Event]], ready: collections.deque[tuple[int, Event]]
) -> None:
    """Move every event already queued into `ready`, joining a choice's consecutive text
    pieces into one: a reader that fell behind (a slow client, a busy loop) gets one event,
    and one chunk on the wire, for all the text that is ready, not one per token."""
    while True:
        try:
            index, event = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        last = ready[-1][1] if ready and ready[-1][0] == index else None
        if isinstance(last, Text) and isinstance(event, Text):
            ready[-1] = (index, Text(last.text + event.text, last.logprobs + event.logprobs))
        else:
            ready.append((index, event))


PROGRESS: tuple[RequestState, ...] = ("queued", "prefill", "decoding")


def request_info(jobs: Sequence[Job], now: float) -> RequestInfo:
    """One request's choices as one entry, as far along as its furthest choice."""
    return RequestInfo(
        label=jobs[0].label,
        state=max((_request_state(job) for job in jobs), key=PROGRESS.index),
        age_seconds=now - min(job.created for job in jobs),
        prompt_tokens=len(jobs[0].prompt),
        completion_tokens=sum(job.completion_tokens for job in jobs),
        choices=len(jobs),
    )


def _request_state(job: Job) -> RequestState:
    if job.completion_tokens:
        return "decoding"
    return "prefill" if job.reading else "queued"


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    if index == 0 or params.seed is None:
        return params
    return dataclasses.replace(
        params, seed=(params.seed + index + (1 << 63)) % (1 << 64) - (1 << 63)
    )
