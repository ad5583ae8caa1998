"""The embedding thread of one model: requests' inputs wait in one queue, and each forward
pass reads as many of them as `batch_rows` plans (bounded by rows and by padded tokens)."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ...spec.settings import EngineSettings
from ..api import Embedding, EmbeddingFailed, Embeddings, EngineStats, RequestInfo
from .batches import batch_rows
from .forward import backbone, float32_rows, last_states

log = logging.getLogger("mlxdeploy.engine")

Settle = Callable[[Embeddings | EmbeddingFailed], None]


@dataclass(eq=False)
class EmbedJob:
    """One request: its inputs, and their vectors as the forward passes read them."""

    inputs: list[list[int]]
    dimensions: int
    label: str
    settle: Settle  # called once, on the embedding thread
    vectors: dict[int, bytes] = field(default_factory=dict)
    created: float = field(default_factory=time.monotonic)
    started: bool = False  # an input of it is in a forward pass, or read
    cancelled: bool = False

    @property
    def tokens(self) -> int:
        return sum(len(tokens) for tokens in self.inputs)


@dataclass
class Counters:
    prompt_tokens: int = 0
    step_failures: int = 0
    reading: int = 0  # inputs in the forward pass now


class Embedder:
    """Reads inputs into vectors on the thread that calls `run`; the event loop submits."""

    def __init__(self, model: nn.Module, settings: EngineSettings) -> None:
        self._model = model
        self._body = backbone(model)
        self._settings = settings
        self._ready = threading.Condition()
        self._waiting: collections.deque[tuple[EmbedJob, int]] = collections.deque()
        self._jobs: list[EmbedJob] = []  # not settled yet, oldest first
        self._stopped = False
        self._counters = Counters()
        self.size = int(self._read([[0]]).shape[-1])  # one token: the vectors' length

    @property
    def active(self) -> int:
        return len(self._jobs)

    def stats(self) -> EngineStats:
        c = self._counters
        return EngineStats(
            waiting=len(self._waiting),
            batch_size=c.reading,
            prompt_tokens=c.prompt_tokens,
            step_failures=c.step_failures,
        )

    def requests(self) -> list[RequestInfo]:
        now = time.monotonic()
        return [
            RequestInfo(job.label, "prefill" if job.started else "queued",
                        now - job.created, job.tokens, 0)
            for job in list(self._jobs)
        ]  # fmt: skip

    async def embed(
        self, inputs: Sequence[Sequence[int]], dimensions: int | None, label: str
    ) -> Embeddings:
        if dimensions is not None and not 0 < dimensions <= self.size:
            raise EmbeddingFailed(f"dimensions must be 1 to {self.size}, got {dimensions}")
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Embeddings] = loop.create_future()
        job = EmbedJob(
            [list(tokens) for tokens in inputs],
            dimensions or self.size,
            label,
            lambda result: _settle_soon(loop, answer, result),
        )
        self.submit(job)
        try:
            return await answer
        finally:
            job.cancelled = True  # a client gone: its inputs not read yet are skipped

    def submit(self, job: EmbedJob) -> None:
        with self._ready:
            if self._stopped:
                raise EmbeddingFailed("the model has stopped serving")
            self._jobs.append(job)
            self._waiting.extend((job, index) for index in range(len(job.inputs)))
            self._ready.notify()

    def warm_up(self) -> None:
        """Compile the kernels of a batch before the first request (MLX compiles on first
        use): two inputs of different lengths, read together."""
        started = time.monotonic()
        self._read([[0] * 8, [0] * 3])
        log.info("embedding model warmed up in %.1f s", time.monotonic() - started)

    def run(self) -> None:
        """Read batches until `stop`; then fail what is left."""
        while (batch := self._next_batch()) is not None:
            try:
                vectors = self._vectors(batch)
            except Exception as exc:  # contain the failure to the requests in the batch
                log.exception("embedding step failed")
                self._counters.step_failures += 1
                self._fail({job for job, _ in batch}, f"the model could not read the input: {exc}")
                continue
            finally:
                self._counters.reading = 0
            self._deliver(batch, vectors)
        self.fail_all("the model has stopped serving")

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify()

    def fail_all(self, message: str) -> None:
        with self._ready:
            jobs = set(self._jobs)
            self._waiting.clear()
        self._fail(jobs, message)

    def _next_batch(self) -> list[tuple[EmbedJob, int]] | None:
        with self._ready:
            while True:
                while self._waiting and self._waiting[0][0].cancelled:
                    self._drop(self._waiting.popleft()[0])
                if self._stopped:
                    return None
                if self._waiting:
                    break
                self._ready.wait()
            lengths = (len(job.inputs[index]) for job, index in self._waiting)
            settings = self._settings
            rows = batch_rows(lengths, settings.max_batch_size, settings.embed_batch_tokens)
            batch = [self._waiting.popleft() for _ in range(rows)]
            for job in {job for job, _ in batch if job.cancelled}:
                self._drop(job)
            batch = [(job, index) for job, index in batch if not job.cancelled]
            for job, _ in batch:
                job.started = True
            self._counters.reading = len(batch)
            return batch

    def _vectors(self, batch: list[tuple[EmbedJob, int]]) -> list[bytes]:
        if not batch:
            return []
        rows = [job.inputs[index] for job, index in batch]
        states = self._read(rows)
        self._counters.prompt_tokens += sum(len(row) for row in rows)
        return float32_rows(states, [job.dimensions for job, _ in batch])

    def _read(self, rows: list[list[int]]) -> mx.array:
        states = last_states(self._model, self._body, rows, self._settings.prefill_step_size)
        mx.eval(states)
        return states

    def _deliver(self, batch: list[tuple[EmbedJob, int]], vectors: list[bytes]) -> None:
        for (job, index), vector in zip(batch, vectors, strict=True):
            job.vectors[index] = vector
            if len(job.vectors) == len(job.inputs):
                vectors_in_order = tuple(Embedding(job.vectors[i]) for i in range(len(job.inputs)))
                self._drop(job)
                job.settle(Embeddings(vectors_in_order, job.tokens))

    def _fail(self, jobs: set[EmbedJob], message: str) -> None:
        for job in jobs:
            self._drop(job)
            job.settle(EmbeddingFailed(message))

    def _drop(self, job: EmbedJob) -> None:
        with self._ready:  # a reentrant lock: also called while holding it
            if job in self._jobs:
                self._jobs.remove(job)


def _settle_soon(
    loop: asyncio.AbstractEventLoop,
    answer: asyncio.Future[Embeddings],
    result: Embeddings | EmbeddingFailed,
) -> None:
    """From the embedding thread: the request's answer, on its event loop."""
    try:
        loop.call_soon_threadsafe(_settle, answer, result)
    except RuntimeError:  # the loop has closed: nobody waits any more
        pass


def _settle(answer: asyncio.Future[Embeddings], result: Any) -> None:
    if answer.done():  # cancelled meanwhile
        return
    if isinstance(result, EmbeddingFailed):
        answer.set_exception(result)
    else:
        answer.set_result(result)
