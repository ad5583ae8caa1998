"""The generation thread of one model: the only thread that touches that model's MLX state
(several models have one thread each; MLX keeps default streams and random state per thread).

Requests arrive through a thread-safe inbox and join a running batch (continuous batching: the
generation loop `loops.py` chooses, entered through `admission.py`); each step's events for
every request are handed back to the event loop in one call. Cancelled requests leave the batch
before the next step.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from ..spec.settings import EngineSettings
from .admission import Admission
from .api import (
    EngineStats,
    Event,
    Failed,
    Progress,
    PromptRejected,
)
from .faults import FaultPlan
from .generator import SlotGenerator
from .job import Job, Sink
from .loops import Generator, Loop
from .peers import LostRank, Order, Peers, Tick
from .prefix_cache import Prefixes
from .reasoning import ThinkingFormat
from .speculative import Drafter, DraftModel, DraftStats
from .tool_formats import ToolFormat

log = logging.getLogger("mlxdeploy.engine")

SHUTTING_DOWN = "the server is shutting down"
Deliver = Callable[[list[tuple[Sink, Event]]], None]


Choices = tuple[Job, ...]


@dataclass
class Counters:
    """Totals since start; plain ints written by the generation thread, read at scrape time."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefix_cache_hits: int = 0
    cached_tokens: int = 0
    step_failures: int = 0
    queued: int = 0  # inserted into the generator, not yet given a batch slot


class Worker:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        settings: EngineSettings,
        deliver: Deliver,
        fault: FaultPlan | None = None,
        tool_format: ToolFormat | None = None,
        peers: Peers | None = None,
        make_job: Callable[[Order], Job] | None = None,
        thinking: ThinkingFormat | None = None,
        draft: DraftModel | None = None,
    ):
        """`peers`: the ranks of a distributed model; a follower (not rank 0) rebuilds the
        leader's requests with `make_job`. `thinking`: how a thinking model writes its
        thinking. `draft`: a draft model that guesses tokens (speculative decoding)."""
        self.draft = draft
        self.draft_stats = DraftStats()  # kept across the generators the worker makes
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self._deliver = deliver
        self._inbox: queue.SimpleQueue[Job | Choices | None] = queue.SimpleQueue()
        self._cancelled: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._jobs: dict[int, Job] = {}
        self._stop = threading.Event()
        self.loop = Loop.of(model, settings, distributed=peers is not None)
        self._generator: Generator | None = None
        self.prefixes = Prefixes(
            model, settings.prompt_cache_entries, settings.prompt_cache_bytes, peers is None
        )
        self.admission = Admission(
            model,
            tokenizer,
            self.prefixes,
            settings.prompt_chunk,
            tool_format,
            thinking,
            last_apart=self.loop.slotted,
        )
        self._fault = fault
        self._peers = peers
        self._make_job = make_job
        self.turned: float | None = None  # when the last lockstep turn ended (peers.py)
        self.counters = Counters()

    # -- called from other threads -------------------------------------------------------
    def submit(self, job: Job | Choices) -> None:
        """A request, or the choices of one request (they share the reading of the prompt)."""
        self._inbox.put(job)

    def cancel(self, job: Job) -> None:
        self._cancelled.put(job)

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(None)

    @property
    def active(self) -> int:
        return len(self._jobs)

    def stats(self) -> EngineStats:
        c = self.counters
        queued = min(c.queued, len(self._jobs))
        return EngineStats(
            waiting=self._inbox.qsize() + queued,
            batch_size=len(self._jobs) - queued,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            prefix_cache_hits=c.prefix_cache_hits,
            cached_tokens=c.cached_tokens,
            step_failures=c.step_failures,
            prefix_cache_bytes=self.prefixes.nbytes,
            prefix_cache_entries=self.prefixes.held,
            draft_tokens=self.draft_stats.drafted,
            draft_tokens_accepted=self.draft_stats.accepted,
        )

    # -- the generation thread -----------------------------------------------------------
    def run(self) -> None:
        self._generator = self._new_generator()
        if self._peers is not None:
            self._run_in_lockstep(self._peers)
            return
        while not self._stop.is_set():
            self._admit(self._take(block=not self._jobs))
            try:
                self._drop_cancelled(self._take_cancelled())
                if self._jobs:
                    self._step()
            except Exception as exc:  # contain the failure to the requests in the batch
                log.exception("generation step failed")
                self.counters.step_failures += 1
                self._fail_all(f"generation failed: {exc}")
                self._replace_generator()
            self.counters.queued = self._generator.waiting if self._generator else 0
        self.fail_all(SHUTTING_DOWN)

    def _run_in_lockstep(self, peers: Peers) -> None:
        """The generation loop of a distributed model (peers.py): every rank admits, drops
        and steps as the leader does. Any failure ends it on this rank: the ranks could no
        longer agree on the batch."""
        try:
            self.turned = time.monotonic()
            while self._lockstep_turn(peers):
                self.turned = time.monotonic()
                self.counters.queued = self._generator.waiting if self._generator else 0
        except Exception as exc:
            message = f"the distributed model stopped: {exc}"
            log.error("%s (rank %d of %d)", message, peers.rank, peers.size)
            self.fail_all(message)
            raise LostRank(message) from exc
        self.fail_all(SHUTTING_DOWN)

    def _lockstep_turn(self, peers: Peers) -> bool:
        if peers.leader:
            # Cancellations first: one that comes after them finds its job in the batch
            # next turn, one that came before leaves its job out of the inbox's take.
            cancelled = self._take_cancelled()
            admitted = self._take(block=not self._jobs)
            stop = self._stop.is_set()
            if stop:  # taken from the inbox, never to be read: they end here
                self._deliver([(job.sink, Failed(SHUTTING_DOWN)) for job in _flat(admitted)])
                admitted = []
            peers.share(Tick([_order(x) for x in admitted], [j.uid for j in cancelled], stop))
        else:
            tick = peers.share(None)
            admitted = [self._rebuild(order) for order in tick.admitted]
            cancelled, stop = [self._jobs[uid] for uid in tick.cancelled], tick.stop
        if stop:
            return False
        self._admit(admitted)
        self._drop_cancelled(cancelled)
        if self._jobs:
            self._step()
        return True

    def _rebuild(self, order: Order | tuple[Order, ...]) -> Job | Choices:
        assert self._make_job is not None, "a follower rebuilds the leader's requests"
        if isinstance(order, tuple):
            return tuple(self._make_job(o) for o in order)
        return self._make_job(order)

    def _replace_generator(self) -> None:
        """After a failed step the batch's state is unknown: start from an empty one."""
        if self._generator is not None:
            try:
                self._generator.close()
            except Exception:
                log.exception("closing the failed batch generator")
        self._generator = self._new_generator()

    def _new_generator(self) -> Generator:
        agree = self._peers.agree if self._peers is not None else None
        drafter = None
        if self.draft is not None:
            d, chunk = self.draft, self.settings.prefill_step_size
            drafter = Drafter(
                d.model,
                d.num_draft_tokens,
                chunk,
                d.width,
                stats=self.draft_stats,
                pricing=d.pricing,
            )
        return self.loop.generator(self.model, self.settings, agree, drafter)

    def warm_up(self, rounds: list[list[Job]]) -> list[Event]:
        """Run the rounds' jobs to their end, before `run` (engine/warmup.py says why): each
        round is inserted once the jobs before it have all been through a decode step. Leaves
        no trace: counters and prefix cache start empty. Their events, in order."""
        events: list[Event] = []
        deliver = self._deliver
        self._deliver = lambda items: events.extend(event for _, event in items)
        self._generator = generator = self._new_generator()
        try:
            for jobs in rounds:
                while self._jobs and generator.pending:
                    self._step()
                if self._jobs:  # the step that reads their prompts' last tokens
                    self._step()
                for job in jobs:
                    self._insert_or_fail(job)
            while self._jobs:
                self._step()
        finally:
            generator.close()
            self._deliver, self._jobs, self._generator = deliver, {}, None
            self.prefixes.clear()
            self.counters = Counters()
        return events

    def _take(self, block: bool) -> list[Job | Choices]:
        """The requests in the inbox, less those whose clients went away meanwhile; up to a
        stop (None)."""
        taken: list[Job | Choices] = []
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return taken
        while item is not None:
            if isinstance(item, tuple):
                live = tuple(job for job in item if not job.cancelled)
                if live:
                    taken.append(live)
            elif not item.cancelled:
                taken.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
        return taken

    def _admit(self, taken: list[Job | Choices]) -> None:
        """On one process, a request whose client left while earlier ones were read is left
        out too; ranks in lockstep admit exactly what rank 0 took."""
        recheck = self._peers is None
        for item in taken:
            if isinstance(item, tuple):
                self._insert_choices(item, recheck)
            elif not (recheck and item.cancelled):
                self._insert_or_fail(item)

    def _insert_choices(self, jobs: Choices, recheck: bool = True) -> None:
        """The n choices of one request: their prompt is read once, then each choice starts
        from its own copy of that cache and samples its own answer."""
        live = [job for job in jobs if not (recheck and job.cancelled)]
        if not live:
            return
        if isinstance(self._generator, SlotGenerator):  # read once by the schedule itself
            self._insert_shared(live)
            return
        try:
            shared, cached = self.admission.prefill(live[0].prompt)
        except Exception as exc:
            if self._peers is not None:  # the ranks' caches may no longer agree
                raise
            log.exception("reading a prompt failed")
            self._deliver([(job.sink, Failed(f"generation failed: {exc}")) for job in live])
            return
        for job in live:
            job.cached_tokens = cached
            self._insert_or_fail(job, shared)

    def _insert_or_fail(self, job: Job, shared: list[Any] | None = None) -> None:
        assert self._generator is not None
        try:
            self.admission.insert(self._generator, job, shared)
        except PromptRejected as exc:  # the API checks schemas first; this is the backstop
            self._deliver([(job.sink, Failed(str(exc)))])
        except Exception as exc:  # only this request fails; the batch goes on
            if self._peers is not None:  # unless the ranks may no longer agree on the batch
                raise
            log.exception("admitting a request failed")
            self._deliver([(job.sink, Failed(f"generation failed: {exc}"))])
        else:
            self._track(job)

    def _insert_shared(self, jobs: list[Job]) -> None:
        """Choices whose prompt the generator reads once."""
        assert self._generator is not None
        chosen: list[tuple[Job, Any, list[Any]]] = []
        for job in jobs:
            try:
                chosen.append((job, *self.admission.prepare(job)))
            except PromptRejected as exc:
                self._deliver([(job.sink, Failed(str(exc)))])
        if not chosen:
            return
        try:
            self.admission.insert_shared(self._generator, chosen)
        except Exception as exc:  # only these choices fail; the batch goes on
            if self._peers is not None:  # unless the ranks may no longer agree on the batch
                raise
            log.exception("admitting a request failed")
            self._deliver([(job.sink, Failed(f"generation failed: {exc}")) for job, _, _ in chosen])
            return
        for job, _, _ in chosen:
            self._track(job)

    def _track(self, job: Job) -> None:
        """An inserted job: its events come from the generator's steps."""
        self._jobs[job.uid] = job
        c = self.counters
        c.prompt_tokens += len(job.prompt)
        if job.cached_tokens:
            c.prefix_cache_hits += 1
            c.cached_tokens += job.cached_tokens

    def _keep_snapshot(self, job: Job) -> None:
        """The cache at the end of the segment just read, as an entry of the prefix cache."""
        assert self._generator is not None
        end = job.snapshots.pop(0)
        found = self._generator.extract_cache([job.uid]).get(job.uid)
        if found is not None:
            cache = found[0]
            mx.eval([c.state for c in cache])  # a copy of its own, not a view of the batch's
            self.prefixes.store(job.prompt[:end], cache, job.params.adapter)

    def _take_cancelled(self) -> list[Job]:
        taken: list[Job] = []
        while True:
            try:
                job = self._cancelled.get_nowait()
            except queue.Empty:
                return taken
            # The identity check matters: after a failed step the new generator reuses uids.
            if self._jobs.get(job.uid) is job and job not in taken:  # cancelled once or twice
                taken.append(job)

    def _drop_cancelled(self, jobs: list[Job]) -> None:
        assert self._generator is not None
        for job in jobs:
            del self._jobs[job.uid]
        if jobs:
            self._generator.remove([job.uid for job in jobs])

    def _step(self) -> None:
        assert self._generator is not None
        if self._fault is not None:
            self._fault.check(job.completion_tokens for job in self._jobs.values())
        prompt_responses, responses = self._generator.next()
        out: list[tuple[Sink, Event]] = []
        for pr in prompt_responses:
            job = self._jobs.get(pr.uid)
            if job is not None:
                job.reading = True
            if job is not None and job.snapshots and pr.end_of_segment and not pr.end_of_prompt:
                self._keep_snapshot(job)
            if job is not None and not pr.end_of_prompt:
                out.append((job.sink, Progress(*pr.progress)))
        finished_early = []
        for r in responses:
            job = self._jobs.get(r.uid)
            if job is None:
                continue
            self.counters.completion_tokens += 1
            reason = job.advance(r.token, r.finish_reason, r.logprobs)
            out.extend((job.sink, e) for e in job.events)
            job.events.clear()
            if reason is not None:
                del self._jobs[r.uid]
                if r.finish_reason is None:
                    finished_early.append(r.uid)
                else:
                    self.prefixes.store(r.all_tokens, r.prompt_cache, job.params.adapter)
        if finished_early:
            self._generator.remove(finished_early)
        if out:
            self._deliver(out)

    def fail_all(self, message: str) -> None:
        """Fail every request, waiting ones included; for the end of the generation thread."""
        self._fail_all(message, include_waiting=True)

    def _fail_all(self, message: str, include_waiting: bool = False) -> None:
        jobs, self._jobs = list(self._jobs.values()), {}
        while include_waiting:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, tuple):
                jobs.extend(job)
            elif job is not None:
                jobs.append(job)
        if jobs:
            self._deliver([(job.sink, Failed(message)) for job in jobs])


def _flat(taken: list[Job | Choices]) -> list[Job]:
    return [job for item in taken for job in (item if isinstance(item, tuple) else (item,))]


def _order(item: Job | Choices) -> Order | tuple[Order, ...]:
    if isinstance(item, tuple):
        return tuple(Order(job.prompt, job.params, job.label, job.boundary) for job in item)
    return Order(item.prompt, item.params, item.label, item.boundary)
