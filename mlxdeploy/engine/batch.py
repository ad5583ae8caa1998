# mlx-lm declares these batch attributes Optional and fills them before any step runs:
# mypy: disable-error-code="index,arg-type,union-attr"
"""mlx-lm's BatchGenerator with a cheaper decode step.

mlx-lm normalizes every step's logits into log-probabilities (a logsumexp over the whole
vocabulary for every sequence) and splits them per sequence, because its API returns
logprobs. Greedy or temperature sampling does not need them: on a CPU the logsumexp alone was
~20 ms of a ~95 ms step at 32 sequences (BENCHMARKS.md). Here the samplers receive raw logits
(see `sampling.py`: each sampler normalizes only if it must), and only the rows of requests
that ask for log-probabilities are normalized (see `logprobs.py`); a step's responses carry
`TokenScores` for those rows and None for the others.

Two changes to how rows join and leave the batch (the schedule is `FastBatchGenerator.next_step`):
- A row joins with its prompt read but for the last token, and the next decode step reads that
  token with the rest of the batch and samples the row's first token. mlx-lm runs a forward pass
  of its own for the new rows (a whole pass over the weights for one token), then merges them.
- A row that ends is retired, not cut out: it stays in the batch, computed but unread, until a
  new row takes its place (`join`, `slots.py`) or, with no prompt coming, enough have ended to
  make one compaction worth it. Cutting a row out copies the whole batch's KV cache, which at
  batch 128 on a GPU costs more than a decode step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import mlx.core as mx
from mlx_lm.generate import GenerationBatch, PromptProcessingBatch, TokenBuffer

from . import slots
from .logprobs import RowScores, arrays_of
from .mlx_lm_internals import BatchGeneratorBase, GenerationBatchBase, cache_end
from .picking import process_rows, sample_rows, score_asked
from .sampling import SeededSampler

RETIRED = -1  # the uid of a row that ended: it matches no request
TRIM_EVERY = 64  # decode steps between looks at how much of the shared length can go
# The per-row lists of a decode batch besides its cache and next tokens.
ROW_STATE = ("uids", "tokens", "samplers", "logits_processors", "stop_sequences", "max_tokens",
             "next_logprobs", "token_context", "num_tokens", "matchers", "fresh")  # fmt: skip


def compaction_due(rows: int, retired: int) -> bool:
    """Whether a batch of `rows` with `retired` ended rows should be compacted now: once an
    eighth of it has ended (every ended row, in a batch of up to 8)."""
    return retired > 0 and retired * 8 >= max(rows, 8)


class LogitsGenerationBatch(GenerationBatchBase):
    # uid -> how many alternatives its request asked for; only those rows are normalized.
    # The generator gives the batch its own mapping (FastBatchGenerator.__init__).
    logprobs: Mapping[int, int] = MappingProxyType({})
    # A distributed model's ranks take rank 0's sampled tokens (peers.py); None on one process.
    agree: Callable[[mx.array], mx.array] | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        self.fresh: list[bool] = []  # per row: this step reads its prompt's last token
        self.retired = 0  # rows that ended, to be reused (`join`) or cut out (`compact`)
        super().__init__(*args, **kwargs)

    @classmethod
    def starting(cls, read: PromptProcessingBatch, last: list[int]) -> LogitsGenerationBatch:
        """The rows of `read`, whose prompts are read but for the tokens in `last`: the next
        step they are part of reads those tokens and samples each row's first token."""
        batch = cls.empty(read.model, read.fallback_sampler)
        batch.uids, batch.prompt_cache, batch.tokens = read.uids, read.prompt_cache, read.tokens
        batch.samplers, batch.logits_processors = read.samplers, read.logits_processors
        batch.stop_sequences, batch.max_tokens = read.stop_sequences, read.max_tokens
        rows = len(read.uids)
        batch.next_tokens = mx.array(last, dtype=mx.uint32)
        batch.next_logprobs = [None] * rows
        batch.token_context = [TokenBuffer(t) for t in read.tokens]
        batch.num_tokens = [0] * rows
        batch.matchers = [ss.matcher() for ss in read.stop_sequences]
        batch.fresh = [True] * rows
        return batch

    @property
    def live(self) -> int:
        return len(self.uids) - self.retired

    def extend(self, batch: LogitsGenerationBatch) -> None:
        super().extend(batch)
        self.fresh.extend(batch.fresh)
        self.retired += batch.retired

    def filter(self, keep: list[int]) -> None:
        super().filter(keep)
        self.fresh = [self.fresh[i] for i in keep]
        self.retired = sum(1 for uid in self.uids if uid == RETIRED)

    def retire(self, rows: Sequence[int]) -> None:
        """Rows whose requests ended: computed, greedily and unread, until new rows take
        their place (`join`) or `compact` cuts them out."""
        rows = [e for e in rows if self.uids[e] != RETIRED]
        for e in rows:
            self.uids[e] = RETIRED
            self.logits_processors[e] = []
        sampler = self._shared_sampler()
        for e in rows:
            self.samplers[e] = sampler
        self.retired += len(rows)
        for cache in self.prompt_cache:
            slots.empty_rows(cache, rows)

    def _shared_sampler(self) -> Any:
        """A live row's sampler for the retired rows, so that they add no sampler call of
        their own; never a seeded one (each of those draws for its own rows only)."""
        live = (s for s, uid in zip(self.samplers, self.uids, strict=True) if uid != RETIRED)
        return next((s for s in live if not isinstance(s, SeededSampler)), self.fallback_sampler)

    def join(self, batch: LogitsGenerationBatch) -> None:
        """Rows that start decoding: written into retired rows when there are enough and the
        caches allow it (only their own cache is copied, `slots.py`), else appended after a
        compaction (the whole batch's cache is copied once)."""
        free = [e for e, uid in enumerate(self.uids) if uid == RETIRED][: len(batch.uids)]
        fits = len(free) == len(batch.uids)
        fits = fits and slots.reusable(self.prompt_cache, batch.prompt_cache)
        lengths = slots.row_lengths(batch.prompt_cache[0]) if fits else []
        if not fits or max(lengths) > cache_end(self.prompt_cache[0]):
            self.compact()
            self.extend(batch)
            return
        for cache, incoming in zip(self.prompt_cache, batch.prompt_cache, strict=True):
            slots.place_rows(cache, incoming, free, lengths)
        for j, e in enumerate(free):
            self._take_row(e, batch, j)
        self.next_tokens[mx.array(free)] = batch.next_tokens
        self.retired -= len(free)

    def _take_row(self, e: int, batch: LogitsGenerationBatch, j: int) -> None:
        """Row `j` of `batch`'s state (all but its cache) into row `e`."""
        for name in ROW_STATE:
            getattr(self, name)[e] = getattr(batch, name)[j]

    def compact(self) -> None:
        """Cut the retired rows out (one copy of the batch's KV cache)."""
        if self.retired:
            self.filter([e for e, uid in enumerate(self.uids) if uid != RETIRED])

    def next(self) -> list[GenerationBatch.Response]:
        """mlx-lm's `next`, for live rows that read a generated token; rows that end retire."""
        if not self.uids:
            return []
        fresh, self.fresh = self.fresh, [False] * len(self.uids)
        tokens, scores = self.step()
        counts, matchers = self.num_tokens, self.matchers
        responses, ended = [], []
        for e, uid in enumerate(self.uids):
            if uid == RETIRED or fresh[e]:
                continue
            counts[e] += 1
            finish = "length" if counts[e] >= self.max_tokens[e] else None
            if matchers[e].advance(tokens[e]):
                finish = "stop"
            done = finish is not None
            cache, history = (self.extract_cache(e), self.tokens[e]) if done else (None, None)
            responses.append(self.Response(uid, tokens[e], scores[e], finish, cache, history))
            if done:
                ended.append(e)
                # Computed now: unevaluated, the copy would hold the whole batch's cache.
                mx.async_eval([c.state for c in cache])
        self.retire(ended)
        return responses

    def step(self) -> tuple[list[int], list[Any]]:  # TokenScores, or None: not asked
        inputs, current = self.next_tokens, self.next_logprobs
        self.current_tokens, self.current_logprobs = inputs, current
        logits = self.model(inputs[:, None], cache=self.prompt_cache)[:, -1, :]
        token_context: list[mx.array] = []
        if any(self.logits_processors):
            logits, token_context = self._process(logits, inputs)
        sampled = self._sample(logits)
        if self.agree is not None:
            sampled = self.agree(sampled)
        scores = self._score(logits, sampled)
        self.next_tokens, self.next_logprobs = sampled, scores
        mx.async_eval(sampled, token_context, *arrays_of(scores))
        mx.eval(inputs, *arrays_of(current))
        tokens = inputs.tolist()
        for history, token in zip(self.tokens, tokens, strict=True):
            history.append(token)
        return tokens, [None if row is None else row.get() for row in current]

    def _asked(self) -> list[tuple[int, int]]:
        """(row, k) for each row whose request asked for log-probabilities."""
        if not self.logprobs:
            return []
        wanted = ((e, self.logprobs.get(uid)) for e, uid in enumerate(self.uids))
        return [(e, k) for e, k in wanted if k is not None]

    def _score(self, logits: mx.array, sampled: mx.array) -> list[RowScores | None]:
        """Lazy scores of this step's sampled tokens, for the rows that asked."""
        return score_asked(logits, sampled, self._asked(), len(self.uids))

    def _process(self, logits: mx.array, inputs: mx.array) -> tuple[mx.array, list[mx.array]]:
        return process_rows(logits, inputs, self.logits_processors, self.token_context)

    def _sample(self, logits: mx.array) -> mx.array:
        samplers = [s or self.fallback_sampler for s in self.samplers] or [self.fallback_sampler]
        return sample_rows(logits, samplers)


class FastBatchGenerator(BatchGeneratorBase):
    """mlx-lm's BatchGenerator with its own schedule (`next_step`): each call runs one decode step
    for the batch, then, when prompts are being read, one prefill chunk of those prompts.

    Prompts are admitted in groups. A prefill call costs a pass over the weights whatever its
    size, so while the batch decodes, waiting prompts are held until a full group is waiting
    (`prefill_batch_size`) or the oldest has waited `prefill_wait_steps` decode steps; an idle
    batch admits at once. Rows whose prompts are read join the decode batch at the next step
    (`LogitsGenerationBatch.starting`)."""

    def __init__(
        self,
        model: Any,
        *,
        prefill_wait_steps: int = 0,
        agree: Callable[[mx.array], mx.array] | None = None,
        **kwargs: Any,
    ):
        super().__init__(model, **kwargs)
        # Sequences that finish prefill are merged into this batch object, so its class
        # decides how every decode step runs.
        self.generation_batch = LogitsGenerationBatch.empty(self.model, self.sampler)
        self._logprobs: dict[int, int] = {}
        self.generation_batch.logprobs = self._logprobs
        self.generation_batch.agree = agree
        self._wait_steps = prefill_wait_steps
        self._arrived: dict[int, int] = {}  # uid -> decode steps run when it was inserted

    @property
    def waiting(self) -> int:
        """Sequences inserted but not yet given a slot in the prompt or decode batch."""
        return len(self.unprocessed_sequences)

    @property
    def _steps(self) -> int:
        """Decode steps run."""
        return int(self.counters.generation_steps)

    @property
    def pending(self) -> int:
        """Sequences inserted and not decoding yet: waiting, or their prompts being read."""
        return self.waiting + len(self.prompt_batch)

    def insert(
        self,
        prompts: list[list[int]],
        *args: Any,
        logprobs: Sequence[int | None] | None = None,
        **kwargs: Any,
    ) -> list[int]:
        """mlx-lm's insert, each prompt one segment (see insert_segments)."""
        segments = [[prompt] for prompt in prompts]
        return self.insert_segments(segments, *args, logprobs=logprobs, **kwargs)

    def insert_segments(
        self,
        segments: list[list[list[int]]],
        *args: Any,
        logprobs: Sequence[int | None] | None = None,
        **kwargs: Any,
    ) -> list[int]:
        """mlx-lm's insert_segments (its insert calls it): each prompt read in segments, each
        segment's end reported (`end_of_segment`); `logprobs`, one per prompt: None, or how
        many alternatives that request's tokens report (its responses carry `TokenScores`)."""
        uids: list[int] = super().insert_segments(segments, *args, **kwargs)
        for uid, k in zip(uids, logprobs or [None] * len(uids), strict=True):
            self._arrived[uid] = self._steps
            if k is not None:
                self._logprobs[uid] = k
        return uids

    def remove(self, uids: Sequence[int], return_prompt_caches: bool = False) -> Any:
        """Decoding rows retire (`LogitsGenerationBatch.retire`); waiting ones leave."""
        caches = self.extract_cache(uids) if return_prompt_caches else {}
        gone = set(uids)
        for uid in gone:
            self._forget(uid)
        batch = self.generation_batch
        batch.retire([e for e, uid in enumerate(batch.uids) if uid in gone])
        super().remove(uids)
        return caches

    def _forget(self, uid: int) -> None:
        self._logprobs.pop(uid, None)
        self._arrived.pop(uid, None)

    def next_step(self) -> Any:
        responses = self._decode()
        self._admit()
        prompt_responses = self._read_prompts() if len(self.prompt_batch) else []
        return prompt_responses, responses

    def _decode(self) -> list[GenerationBatch.Response]:
        batch = self.generation_batch
        if not batch.uids:
            return []
        tic = time.perf_counter()
        responses = batch.next()
        counters = self.counters
        counters.decode_time += time.perf_counter() - tic
        counters.generation_tokens += len(responses)
        counters.generation_steps += 1
        if self._steps % 512 == 0:
            mx.clear_cache()
        if self._steps % TRIM_EVERY == 0:
            slots.trim_left(batch.prompt_cache)
        for r in responses:
            if r.finish_reason is not None:
                self._forget(r.uid)
        if not self.pending and compaction_due(len(batch.uids), batch.retired):
            batch.compact()  # no prompt is coming to take the ended rows' places
        return responses

    def _admit(self) -> None:
        """Move waiting sequences to the prompt batch when a group is due (class docstring)."""
        reading = len(self.prompt_batch)
        room = min(
            self.prefill_batch_size - reading,
            self.completion_batch_size - self.generation_batch.live - reading,
        )
        n = min(room, self.waiting)
        if n <= 0:
            return
        oldest = self.unprocessed_sequences[0][0]
        waited = self._steps - self._arrived.get(oldest, self._steps)
        idle = self.generation_batch.live == 0 or reading > 0
        if idle or n >= self.prefill_batch_size or waited >= self._wait_steps:
            self.prompt_batch.extend(self.make_batch(n))

    def _read_prompts(self) -> list[PromptProcessingBatch.Response]:
        """One prefill chunk of every prompt being read; rows read but for their last token
        go on to decoding."""
        out = self._start_decoding()
        processing, batch = self.currently_processing, self.prompt_batch
        if not processing:
            return out
        chunks = []
        for e, seq in enumerate(processing):
            segments = seq[0]
            n = min(len(segments[0]), self.prefill_step_size)
            chunks.append(segments[0][:n])
            segments[0] = segments[0][n:]
            end_of_segment = not segments[0]
            if end_of_segment:
                segments.pop(0)
            seq[1] += n
            uid = batch.uids[e]
            out.append(PromptProcessingBatch.Response(uid, (seq[1], seq[2]), end_of_segment, False))
        self.counters.prompt_tokens += sum(len(c) for c in chunks)
        tic = time.perf_counter()
        batch.prompt(chunks)
        self.counters.prompt_time += time.perf_counter() - tic
        return out + self._start_decoding()

    def _start_decoding(self) -> list[PromptProcessingBatch.Response]:
        processing = self.currently_processing
        ready = [e for e, seq in enumerate(processing) if len(seq[0]) == 1 and len(seq[0][0]) == 1]
        if not ready:
            return []
        last = [processing[e][0][0][0] for e in ready]
        totals = [processing[e][2] for e in ready]
        if len(ready) == len(processing):  # the usual case: the whole group is read
            read = self.prompt_batch
            self.prompt_batch = PromptProcessingBatch.empty(
                self.model, self.sampler, prefill_step_size=self.prefill_step_size
            )
            self.currently_processing = []
        else:
            read = self.prompt_batch.split(ready)
            self.currently_processing = [s for e, s in enumerate(processing) if e not in ready]
        uids = list(read.uids)
        self.generation_batch.join(LogitsGenerationBatch.starting(read, last))
        return [
            PromptProcessingBatch.Response(uid, (total, total), True, True)
            for uid, total in zip(uids, totals, strict=True)
        ]
