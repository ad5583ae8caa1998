"""MLXEngine: the Engine the app talks to for one model, backed by its own generation thread."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

from ..spec.catalog import ServedModel
from .adapters import AdapterError
from .adapters import prepare as prepare_adapters
from .api import (
    EmbeddingFailed,
    Embeddings,
    EngineState,
    EngineStats,
    Event,
    Failed,
    Finished,
    Heartbeat,
    Prompt,
    RequestInfo,
    RoleOverride,
    SamplingParams,
    ToolUse,
    Turn,
)
from .choices import ChoiceSink, choice_params, request_info, take_ready
from .draft_depth import draft_cost
from .draft_prices import describe as describe_prices
from .draft_prices import measure as measure_prices
from .embedding.checkpoints import embedding_classes
from .embedding.embedder import Embedder
from .faults import FaultPlan
from .formats import Formats
from .job import Job, Sink
from .peers import LostRank, Order, Peers
from .sampling import Vocabulary
from .speculative import Drafter, DraftModel, SpeculationError, logits_width
from .text import Decode, TextStream, fast_decode
from .warmup import Discard, conversations, default_params
from .warmup import rounds as warmup_rounds
from .weights.loader import ModelLoadError, load_model
from .weights.progress import Progress
from .worker import Worker

log = logging.getLogger("mlxdeploy.engine")


class MLXEngine:
    def __init__(
        self,
        model: ServedModel,
        cache_root: Path | None = None,
        load_lock: threading.Lock | None = None,
        progress: Progress | None = None,
        peers: Peers | None = None,
    ):
        """`load_lock`, shared by the engines of one server, makes them load one at a time;
        `progress` shows the download, conversion and reading of the weights (log lines when
        None); `peers`: the ranks of a distributed model, this engine being one of them (on
        rank 0 it serves; on the others `follow` runs it)."""
        self.model = model
        self.settings = model.engine
        self._load_lock = load_lock or threading.Lock()
        self._progress = progress
        self._cache_root = cache_root
        self._state: EngineState = "loading"
        self.error: str | None = None
        self._loaded = threading.Event()
        self._stop_requested = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._worker: Worker | None = None
        self._tokenizer: Any = None
        self._decode: Decode = str  # the tokenizer's decode, once loaded
        self.formats: Formats | None = None  # once loaded
        self.context_length: int | None = None
        self.vocab_size: int | None = None
        self.embedding_size: int | None = None  # an embedding model's vectors, once loaded
        self._live: set[Job] = set()  # requests being streamed; touched on the event loop only
        self._aborted: str | None = None
        self._peers = peers
        self.resident_bytes: int | None = None  # the weights', once loaded
        self._embedder: Embedder | None = None  # an embedding model's, once loaded

    @property
    def model_id(self) -> str:
        return self.model.id

    @property
    def state(self) -> EngineState:
        if self._state == "ready" and self._thread is not None and not self._thread.is_alive():
            return "failed"
        return self._state

    @property
    def running(self) -> int:
        if self._embedder is not None:
            return self._embedder.active
        return self._worker.active if self._worker is not None else 0

    def stalled_seconds(self) -> float:
        """How long the ranks of a distributed model have been in one turn (0 elsewhere)."""
        turned = self._worker.turned if self._worker is not None else None
        return 0.0 if turned is None else time.monotonic() - turned

    def stats(self) -> EngineStats:
        if self._embedder is not None:
            return self._embedder.stats()
        return self._worker.stats() if self._worker is not None else EngineStats()

    def requests(self) -> list[RequestInfo]:
        if self._embedder is not None:
            return self._embedder.requests()
        by_request: dict[int, list[Job]] = {}  # a request's choices share their sink's queue
        for job in self._live:
            by_request.setdefault(id(job.sink.queue), []).append(job)
        now = time.monotonic()
        infos = [request_info(jobs, now) for jobs in by_request.values()]
        return sorted(infos, key=lambda info: -info.age_seconds)

    def abort(self, message: str) -> None:
        self._aborted = message
        if self._embedder is not None:
            self._embedder.fail_all(message)
        for job in self._live:
            job.sink.put_nowait(Failed(message))
            job.cancelled = True
            if self._worker is not None:
                self._worker.cancel(job)

    # -- lifecycle --------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop, load: bool = True) -> None:
        """Deliver on `loop`; load the weights now, or (`load=False`) when `load` is called."""
        self._loop = loop
        if load:
            self.load()
        else:
            self._state = "unloaded"
            self._loaded.set()

    def load(self) -> None:
        self._state = "loading"
        self.error = None
        self._aborted = None
        self._loaded.clear()
        self._stop_requested.clear()
        self._thread = threading.Thread(
            target=self._main, name=f"mlxdeploy-generation-{self.model.id}", daemon=True
        )
        self._thread.start()

    def unload(self, timeout: float = 30.0) -> None:
        """Stop the generation thread and drop every reference to the weights, so that MLX
        can give their memory back; `load` reads them again."""
        self.stop(timeout)
        self._worker = None
        self._embedder = None
        self._tokenizer = None
        self.formats = None
        self._decode = str
        self.resident_bytes = None
        gc.collect()
        mx.clear_cache()
        self._state = "unloaded"

    def wait_loaded(self, timeout: float | None = None) -> EngineState:
        self._loaded.wait(timeout)
        return self.state

    def stop(self, timeout: float = 30.0) -> None:
        self._stop_requested.set()  # seen by a load still in progress
        if self._worker is not None:
            self._worker.stop()
        if self._embedder is not None:
            self._embedder.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self) -> None:
        try:
            fault = FaultPlan.from_env(os.environ)
        except ValueError as exc:
            self._fail(str(exc))
            return
        try:
            with self._load_lock:
                if self._stop_requested.is_set():  # stopped while waiting for its turn
                    self._state = "stopped"
                    self._loaded.set()
                    return
                shard = self._peers.shard if self._peers is not None else None
                classes = embedding_classes if self.model.task == "embed" else None
                model, self._tokenizer = load_model(
                    self.model.source, self._cache_root, self._progress, shard, classes
                )
                prepare_adapters(model, self.model.adapters, self._peers is not None)
                draft = None if self.model.draft is None else self._load_draft(model)
        except SpeculationError as exc:
            self._fail(f"model '{self.model.id}' cannot speculate: {exc}")
            return
        except AdapterError as exc:
            self._fail(f"cannot serve the adapters of model '{self.model.id}': {exc}")
            return
        except ModelLoadError as exc:
            self._fail(str(exc))
            return
        except Exception as exc:  # anything else while loading is still a load failure
            log.exception("model load failed")
            self._fail(f"cannot load model '{self.model.model}': {exc}")
            return
        self.resident_bytes = _weight_bytes(model) + (
            0 if draft is None else _weight_bytes(draft.model)
        )
        if self.model.task == "embed":
            self._serve_embeddings(model)
            return
        if self.model.chat_template is not None:  # the spec's template wins
            self._tokenizer.chat_template = self.model.chat_template
        self._decode = fast_decode(self._tokenizer)
        try:
            self.formats = Formats.of(self._tokenizer, self.model)
        except (ValueError, ImportError) as exc:
            self._fail(str(exc))
            return
        self.context_length = _context_length(model)
        self.vocab_size = Vocabulary.of(model, self._tokenizer).size
        try:
            self._worker = self._new_worker(model, fault, draft)
        except ValueError as exc:  # the spec asks of the model what it cannot do
            self._fail(f"model '{self.model_id}' cannot be served: {exc}")
            return
        try:
            self._get_ready(self._worker)
        except LostRank as exc:  # a rank that failed to load, or to warm up
            self._fail(f"the distributed model did not start: {exc}")
            return
        self._state = "ready"
        self._loaded.set()
        thinking = self.formats.thinking
        thinks = f", thinks in {thinking.name}" if thinking is not None else ""
        log.info("model %s ready (%s%s)", self.model_id, self.prompt_format, thinks)
        try:
            self._worker.run()
            self._state = "stopped"
        except LostRank as exc:  # the worker has failed its requests with this message
            self.error = str(exc)
            self._state = "failed"
        except BaseException:
            log.exception("the generation thread died")
            self._state = "failed"
            self._worker.fail_all("the generation thread stopped; the server cannot generate")

    def _serve_embeddings(self, model: Any) -> None:
        """An embedding model's life on this thread: no generation loop, no generation
        warm-up; batches of inputs read into vectors until it stops."""
        try:
            self._embedder = embedder = Embedder(model, self.settings)
            if self.settings.warmup and not self._stop_requested.is_set():
                embedder.warm_up()
        except Exception as exc:
            self._fail(f"model '{self.model.model}' cannot serve embeddings: {exc}")
            return
        self.context_length = _context_length(model)
        self.vocab_size = Vocabulary.of(model, self._tokenizer).size
        self.embedding_size = embedder.size
        if self._stop_requested.is_set():
            embedder.stop()
        self._state = "ready"
        self._loaded.set()
        log.info("model %s ready (embeddings of %d dimensions)", self.model_id, embedder.size)
        try:
            embedder.run()
            self._state = "stopped"
        except BaseException:
            log.exception("the embedding thread died")
            self._state = "failed"
            embedder.fail_all("the embedding thread stopped; the server cannot embed")

    def _get_ready(self, worker: Worker) -> None:
        if self._peers is not None:
            self._peers.barrier()  # every rank has loaded (warm-ups and turns are collectives)
        stopped = self._stop_requested.is_set()
        if stopped:  # stopped while loading: never start generating
            worker.stop()
        # The ranks of a distributed model warm up together, whatever rank 0 was told.
        if self.settings.warmup and (self._peers is not None or not stopped):
            self._warm_up(worker)

    def _load_draft(self, model: Any) -> DraftModel:
        """The spec's draft model, checked against the model (SpeculationError says why it
        cannot guess for it)."""
        assert self.model.draft is not None
        if self._peers is not None:
            raise SpeculationError("a draft model does not run across distributed ranks")
        draft, tokenizer = load_model(self.model.draft, self._cache_root, self._progress)
        if tokenizer.get_vocab() != self._tokenizer.get_vocab():
            raise SpeculationError(
                f"the draft model {self.model.draft_model} has another vocabulary: "
                "a draft needs the model's tokenizer"
            )
        Drafter.check(model, draft)
        pricing = None
        if self.model.draft_depth == "adaptive":
            floor = draft_cost(_weight_bytes(draft), _weight_bytes(model))
            pricing = measure_prices(model, draft, self.model.num_draft_tokens, floor)
            log.info("model %s: %s", self.model_id, describe_prices(pricing))
        return DraftModel(draft, self.model.num_draft_tokens, logits_width(model), pricing)

    def _new_worker(self, model: Any, fault: FaultPlan | None, draft: DraftModel | None) -> Worker:
        assert self.formats is not None
        peers, tools, thinking = self._peers, self.formats.tool_format, self.formats.thinking
        if peers is None or peers.leader:
            return Worker(
                model, self._tokenizer, self.settings, self._deliver, fault, tools, peers,
                thinking=thinking, draft=draft,
            )  # fmt: skip
        follow = self._follower_job
        return Worker(
            model, self._tokenizer, self.settings, _nowhere, fault, tools, peers, follow, thinking
        )

    def follow(self) -> EngineState:
        """A follower rank's whole life, on this thread: load, then generate what rank 0
        hands out until it stops (or a rank is lost)."""
        self._main()
        return self.state

    def _follower_job(self, order: Order) -> Job:
        text = TextStream.create(self._decode, order.params.stop)
        return Job(
            order.prompt, order.params, Discard(), text, label=order.label, boundary=order.boundary
        )

    def _warm_up(self, worker: Worker) -> None:
        """A few short generations through the requests' own path, so that the first request
        is as fast as the rest (engine/warmup.py)."""
        started = time.monotonic()
        try:
            params = default_params(self.model.defaults, self.model.stop)
            short, longer = (self.prepare(turns, None) for turns in conversations())
            batched = [a.id for a in self.model.adapters if not a.fuse]
            wait = self.settings.prefill_wait_steps
            plan = warmup_rounds(short, longer, params, wait, next(iter(batched), None))
            events = worker.warm_up([[self._warmup_job(*r) for r in jobs] for jobs in plan])
        except Exception as exc:  # serving still works; the first requests pay the cold start
            if self._peers is not None:  # but a rank that failed alone has left the others
                raise LostRank(f"warm-up failed: {exc}") from exc
            log.warning("model %s: warm-up failed (%s)", self.model_id, exc)
            return
        for failed in (event for event in events if isinstance(event, Failed)):
            log.warning("model %s: a warm-up request failed: %s", self.model_id, failed.message)
        log.info("model %s warmed up in %.1f s", self.model_id, time.monotonic() - started)

    def _warmup_job(self, prompt: Prompt, params: SamplingParams) -> Job:
        text = TextStream.create(self._decode, params.stop)
        return Job(prompt=prompt.tokens, params=params, sink=Discard(), text=text)

    def _fail(self, message: str) -> None:
        self.error = message
        self._state = "failed"
        self._loaded.set()
        log.error("%s", message)

    @property
    def thinks(self) -> bool:
        return self.formats is not None and self.formats.thinking is not None

    @property
    def prompt_format(self) -> str:
        return "role mapping" if self.formats is None else self.formats.name

    def _deliver(self, items: list[tuple[Sink, Event]]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(_put_all, items)

    # -- requests ---------------------------------------------------------------------
    def prepare(
        self,
        turns: Sequence[Turn],
        role_override: RoleOverride | None,
        tools: ToolUse | None = None,
        template_args: Mapping[str, Any] | None = None,
    ) -> Prompt:
        assert self.formats is not None, "prompts are prepared once the model is loaded"
        # Where the system prompt ends matters only where the prefix cache keeps snapshots.
        boundary = self._worker is not None and self._worker.prefixes.snapshots
        return self.formats.prepare(turns, role_override, tools, template_args, boundary)

    def prepare_text(self, text: str) -> Prompt:
        assert self.formats is not None, "prompts are prepared once the model is loaded"
        return self.formats.prepare_text(text)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        assert self._tokenizer is not None, "texts are tokenized once the model is loaded"
        return [list(self._tokenizer.encode(text)) for text in texts]

    async def embed(
        self, inputs: Sequence[Sequence[int]], dimensions: int | None = None, label: str = ""
    ) -> Embeddings:
        refusal = self._refusal()
        if refusal is not None:
            raise EmbeddingFailed(refusal)
        if self._embedder is None:
            state = self.state
            why = "is not an embedding model" if state == "ready" else f"is {state}"
            raise EmbeddingFailed(f"model '{self.model_id}' {why}")
        return await self._embedder.embed(inputs, dimensions, label)

    async def generate(
        self, prompt: Prompt, params: SamplingParams, label: str = ""
    ) -> AsyncGenerator[Event, None]:
        async with contextlib.aclosing(self.generate_choices(prompt, params, 1, label)) as choices:
            async for _, event in choices:
                yield event

    async def generate_choices(
        self, prompt: Prompt, params: SamplingParams, n: int, label: str = ""
    ) -> AsyncGenerator[tuple[int, Event], None]:
        """`n` answers to one prompt, read once: (choice index, event) pairs, until every
        choice has finished or one has failed. A seeded request's choice i draws from seed + i,
        so the choices differ and each is reproducible."""
        refusal = self._refusal()
        if refusal is not None or self._worker is None:
            yield 0, Failed(refusal or f"the model is not ready (state: {self.state})")
            return
        queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        jobs = [
            self._job(prompt, choice_params(params, i), ChoiceSink(queue, i), label)
            for i in range(n)
        ]
        self._worker.submit(jobs[0] if n == 1 else tuple(jobs))
        self._live.update(jobs)
        finished: set[int] = set()
        failed = False
        ready: collections.deque[tuple[int, Event]] = collections.deque()
        try:
            while len(finished) < n and not failed:
                if not ready:
                    ready.append(await self._next_event(queue))
                    take_ready(queue, ready)
                index, event = ready.popleft()
                failed = isinstance(event, Failed)
                if isinstance(event, Finished):
                    finished.add(index)
                yield index, event
        finally:
            self._live.difference_update(jobs)
            for index, job in enumerate(jobs):  # the choices still running: a client gone,
                if index not in finished and not job.cancelled:  # or another choice failed
                    job.cancelled = True
                    self._worker.cancel(job)

    def _job(self, prompt: Prompt, params: SamplingParams, sink: ChoiceSink, label: str) -> Job:
        text = TextStream.create(self._decode, params.stop)
        return Job(prompt.tokens, params, sink, text, label=label, boundary=prompt.boundary)

    async def _next_event(self, queue: asyncio.Queue[tuple[int, Event]]) -> tuple[int, Event]:
        try:  # skip arming a timer when an event is ready
            return queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        try:
            # asyncio.timeout, unlike wait_for on 3.11, never swallows a cancellation that
            # arrives together with an event.
            async with asyncio.timeout(self.settings.heartbeat_seconds):
                return await queue.get()
        except TimeoutError:
            refusal = self._refusal()  # the thread may have died meanwhile
            return 0, Heartbeat() if refusal is None else Failed(refusal)

    def _refusal(self) -> str | None:
        """Why a request cannot be generated now, or None."""
        if self._aborted is not None:
            return self._aborted
        state = self.state
        if state == "failed":
            return "the generation thread stopped; the server cannot generate"
        if state == "stopped":  # nothing would ever read the request
            return "the model has stopped serving"
        return None


def _nowhere(items: list[tuple[Sink, Event]]) -> None:
    """A follower's events: rank 0 answers the clients."""


def _put_all(items: list[tuple[Sink, Event]]) -> None:
    for sink, event in items:
        sink.put_nowait(event)


def _weight_bytes(model: Any) -> int:
    arrays = tree_flatten(model.parameters())
    assert isinstance(arrays, list)
    return sum(int(array.nbytes) for _, array in arrays)


def _context_length(model: Any) -> int | None:
    args = getattr(model, "args", None)
    value = getattr(args, "max_position_embeddings", None)
    return int(value) if value else None
