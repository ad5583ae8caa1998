"""The generation loop of models whose every layer holds keys and values (full attention, a
sliding window) or state arrays (convolutions, linear attention, SSMs): mlxdeploy's own, on
mlx-lm's model modules, over slot storage (`storage.py`) and a pure plan per step
(`schedule.py`).

One call of `next` is one step of the plan:
- Admitted prompts take a slot; a prefix-cache hit is written into it.
- The running rows decode: the step's forward pass is queued on the device before the tokens
  of the step before are read (`mx.async_eval`), so the device never waits on Python. A row
  that ends frees its slot; nothing else moves.
- Prompt chunks are read straight into their slots. A prompt's last chunk gives its first
  token from its own logits, sampled with the row's sampler and processors; the next decode
  step reads it with the rest.

A decode step reads the slots up to the highest running one; a free slot below it is computed
and unread until a new prompt takes it (the lowest free slot goes first; a slot taken starts
with no state). With one row running, the step is mlx-lm's single-stream step: no mask, plain
offsets. A prompt given in segments stops a chunk at each segment's end and reports it
(`Read.end_of_segment`): the prefix cache keeps the slot's cache there.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx
from mlx_lm.generate import StopSequences
from mlx_lm.models.cache import TokenBuffer
from mlx_lm.sample_utils import make_sampler

from .adapters import bank_of
from .constraints import Guide
from .logprobs import RowScores, arrays_of
from .mixed import MixedForward, Part, family, read_part
from .picking import process_rows, sample_rows, score_asked
from .quantized_slots import KVQuantization
from .rows import Pending, Read, Row, Token
from .sampling import Filtered, SeededSampler, Tempered, greedy
from .schedule import Limits, Plan, Reading, Waiting, plan
from .speculative import Drafter, depth, verify
from .storage import Planned, Slots, held

CLEAR_EVERY = 512  # decode steps between returns of MLX's buffer cache to the system


# Families whose layers mlx-lm gets wrong when prompts are right-padded to one length in one
# call (nemotron_h's mixer ignores the cache's lengths in mlx-lm 0.32): each prompt is read in
# calls of its own, unpadded. tests/test_families.py holds them to single-stream tokens.
UNPADDED = frozenset({"nemotron_h"})


def _without(row: Row, gone: set[int]) -> Row | None:
    """`row` and its followers less those in `gone`: None when none stay; else the first that
    stays leads the others."""
    stay = [r for r in row.starting if r.uid not in gone]
    if not stay:
        return None
    lead = stay[0]
    if lead is not row:
        lead.prompt, lead.history, lead.prefix = row.prompt, row.history, row.prefix
        lead.total, lead.cuts, lead.arrived = row.total, row.cuts, row.arrived
        lead.adapter = row.adapter
    lead.followers = stay[1:]
    return lead


def _drawn(sampler: Any) -> Tempered | Filtered | None:
    """A speculating row's sampler, whose distribution its guesses are verified against
    (None: greedy)."""
    return sampler if isinstance(sampler, Tempered | Filtered) else None


class SlotGenerator:
    """The generation loop (module docstring); the worker's view of it is mlx-lm's
    BatchGenerator's: `insert_segments`, `next`, `remove`, `extract_cache`."""

    def __init__(
        self,
        model: Any,
        *,
        completion_batch_size: int = 32,
        prefill_batch_size: int = 8,
        prefill_step_size: int = 512,
        prefill_wait_steps: int = 0,
        agree: Callable[[mx.array], mx.array] | None = None,
        mix: bool = True,
        kv: KVQuantization | None = None,
        drafter: Drafter | None = None,
        **_: Any,
    ):
        """`mix`: read prompt chunks in the decode steps' forward passes where the model's
        family allows it (`mixed.py`); `agree`: the ranks of a distributed model take rank
        0's sampled tokens (peers.py); `kv`: keep full-attention keys and values quantized
        (`quantized_slots.py`); `drafter`: a draft model guesses tokens that decode steps
        verify (`speculative.py`)."""
        self.model = model
        self.drafter = drafter
        self.kv = kv
        self._mixed = MixedForward.of(model, family(model)) if mix else None
        self.limits = Limits(
            rows=completion_batch_size,
            group=prefill_batch_size,
            chunk=prefill_step_size,
            budget=prefill_step_size * prefill_batch_size,
            wait_steps=prefill_wait_steps,
        )
        self.slots = Slots.for_model(model, prefill_step_size, kv.holder if kv else None)
        bank = bank_of(model)
        self._selection = None if bank is None else bank.selection  # rows' adapters
        self.sampler = make_sampler(0.0)
        self.agree = agree
        self.steps = 0  # decode steps run
        self._uids = itertools.count()
        self._waiting: deque[Row] = deque()
        self._reading: dict[int, Row] = {}  # uid -> row, in admission order
        self._decoding: dict[int, Row] = {}  # slot -> row
        self._pending = Pending()
        # The depth of the last step if it decoded alone (no prompt chunks; 0: plain), and
        # when it returned: steps are timed for the draft's prices (`_timed_step`).
        self._ended: tuple[int, float] | None = None

    # -- the worker's view ------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests decoding."""
        return len(self._decoding)

    def insert(self, prompts: list[list[int]], **kwargs: Any) -> list[int]:
        """mlx-lm's `insert`: each prompt one segment."""
        return self.insert_segments([[prompt] for prompt in prompts], **kwargs)

    @property
    def pending(self) -> int:
        """Requests not decoding yet: waiting, or their prompts being read."""
        return len(self._waiting) + len(self._reading)

    def insert_segments(
        self,
        segments: list[list[list[int]]],
        max_tokens: Sequence[int] | None = None,
        caches: Sequence[list[Any] | None] | None = None,
        all_tokens: Sequence[list[int]] | None = None,
        samplers: Sequence[Any] | None = None,
        logits_processors: Sequence[list[Any] | None] | None = None,
        stop_sequences: Sequence[StopSequences] | None = None,
        logprobs: Sequence[int | None] | None = None,
        shared: bool = False,
        adapters: Sequence[int] | None = None,
        drafts: Sequence[int | None] | None = None,
    ) -> list[int]:
        """Each prompt (its segments, read one after the other) after the tokens already in
        its cache (`all_tokens`, `caches`); the rest as mlx-lm's BatchGenerator takes them.
        `shared`: the prompts are one request's choices, all the same: it is read once, and
        each choice decodes from its own copy of its cache. `adapters`: the adapter of each
        (its number in the model's `AdapterBank`; 0 or none given: the model's own weights).
        `drafts`: each one's most guessed tokens per step (None: the drafter's own)."""
        rows = []
        for i, parts in enumerate(segments):
            uid = next(self._uids)
            prompt = [t for part in parts for t in part]
            done = list(all_tokens[i]) if all_tokens else []
            if not prompt:
                raise ValueError("a prompt needs at least one token to read")
            cuts = list(itertools.accumulate((len(p) for p in parts[:-1]), initial=len(done)))
            processors = list((logits_processors[i] if logits_processors else None) or [])
            stops = stop_sequences[i] if stop_sequences else StopSequences()
            row = Row(
                uid=uid,
                prompt=prompt,
                history=done,
                total=len(done) + len(prompt),
                arrived=self.steps,
                sampler=(samplers[i] if samplers else None) or self.sampler,
                processors=processors,
                matcher=stops.matcher(),
                max_tokens=max_tokens[i] if max_tokens else 256,
                logprobs=logprobs[i] if logprobs else None,
                prefix=caches[i] if caches else None,
                cuts=sorted({c for c in cuts[1:] if len(done) < c < len(done) + len(prompt)}),
                adapter=adapters[i] if adapters else 0,
                drafts=drafts[i] if drafts else None,
            )
            if any(not isinstance(p, Guide) for p in processors):
                row.context = TokenBuffer(done + prompt[:-1])
            rows.append(row)
        if shared and rows:
            rows[0].followers = rows[1:]
            self._waiting.append(rows[0])
        else:
            self._waiting.extend(rows)
        return [row.uid for row in rows]

    def next(self) -> tuple[list[Read], list[Token]]:
        """One step: (the prompt chunks read, the tokens of the running rows)."""
        step = self._plan()
        self._admit(step.admit)
        ended, self._ended = self._ended, None
        if not step.decode:
            return (self._read(step.chunks) if step.chunks else []), []
        guessing = self._guessing() if not step.chunks else {}
        if guessing:
            return [], self._speculate(guessing, ended)
        if step.chunks and self._mixed is not None:
            return self._step(step.chunks)
        if step.chunks:
            tokens = self._step(())[1]
            return self._read(step.chunks), tokens
        return [], self._timed_step(ended)

    def _timed_step(self, ended: tuple[int, float] | None) -> list[Token]:
        """A decode step alone, timed for the draft's prices from the end of the decode step
        alone before it (`ended`: its depth and end) when that was a plain one too: a plain
        step's time is what it costs running a step ahead of Python."""
        rows = len(self._decoding)
        tokens = self._step(())[1]
        now = time.perf_counter()
        if ended is not None and ended[0] == 0 and self.drafter is not None:
            self.drafter.timed(0, rows, now - ended[1])
        self._ended = (0, now)
        return tokens

    def remove(self, uids: Sequence[int], return_prompt_caches: bool = False) -> Any:
        """Requests that leave, wherever they are; their slots are free at once."""
        caches = self.extract_cache(uids) if return_prompt_caches else {}
        gone = set(uids)
        waiting = [_without(r, gone) for r in self._waiting]
        self._waiting = deque(r for r in waiting if r is not None)
        for uid in list(self._reading):
            row = self._reading.pop(uid)
            kept = _without(row, gone)
            if kept is None:
                self.slots.release(row.slot)
            else:  # a choice that stays reads the prompt in the slot of one that left
                kept.slot = row.slot
                self._reading[kept.uid] = kept
        for slot in [s for s, r in self._decoding.items() if r.uid in gone]:
            del self._decoding[slot]
            self.slots.release(slot)
        return caches

    def extract_cache(self, uids: Sequence[int]) -> dict[int, tuple[list[Any], list[int]]]:
        """A copy of each request's cache and the tokens it holds."""
        rows = [*self._reading.values(), *self._decoding.values()]
        out = {}
        for row in rows:
            if row.uid in uids and row.slot >= 0:
                out[row.uid] = (self.slots.extract(row.slot), list(row.history))
        return out

    def close(self) -> None:
        self._waiting.clear()
        self._reading.clear()
        self._decoding.clear()
        self.slots = self.slots.empty()
        self._pending = Pending()
        if self.drafter is not None:
            self.drafter.reset()

    # -- one step -------------------------------------------------------------------------
    def _plan(self) -> Plan:
        reading = [
            Reading(r.uid, len(r.prompt), len(r.starting), r.until) for r in self._reading.values()
        ]
        # One step admits at most a group: the plan needs to see one more waiting, no more.
        first = itertools.islice(self._waiting, self.limits.group + 1)
        waiting = [
            Waiting(r.uid, len(r.prompt), r.arrived, len(r.starting), r.until) for r in first
        ]
        return plan(self.steps, len(self._decoding), reading, waiting, self.limits)

    def _admit(self, uids: Sequence[int]) -> None:
        for _ in uids:
            row = self._waiting.popleft()
            row.slot = self.slots.take()
            if row.prefix is not None:
                self.slots.write(row.slot, row.prefix, len(row.history))
                row.prefix = None
            self._reading[row.uid] = row

    def _step(self, chunks: Sequence[tuple[int, int]]) -> tuple[list[Read], list[Token]]:
        """A decode step of the running rows, `chunks` read in the same forward pass."""
        running = dict(self._decoding)
        slots = self._decode_slots()
        pending = self._pending
        inputs, current = pending.take(slots)
        decode = self.slots.prepare(slots, 1)
        reading = [self._reading[uid] for uid, _ in chunks]
        counts = [n for _, n in chunks]
        ends = [r for r, n in zip(reading, counts, strict=True) if n == len(r.prompt)]
        if chunks:
            logits = self._forward_mixed(decode, inputs, reading, counts)
        else:
            self.slots.activate(decode)
            self._select([0 if r is None else r.adapter for r in map(running.get, slots)])
            logits = self.model(inputs[:, None], cache=self.slots.caches)[:, -1, :]
            self._select(())
        ends, last = self._split(ends)
        read = [inputs]
        if ends:
            read.append(mx.array(last, dtype=inputs.dtype))
        rows = [running.get(slot) for slot in slots] + ends
        sampled, scores, context = self._pick(logits, mx.concatenate(read), rows)
        b = len(slots)
        pending.set(slots, sampled[:b], scores[:b], whole=True)
        if ends:
            pending.set([r.slot for r in ends], sampled[b:], scores[b:])
        mx.async_eval(sampled, context, *arrays_of(scores))
        mx.eval(inputs, *arrays_of(current))
        self.slots.advance(list(running), [1] * len(running))
        tokens: list[int] = inputs.tolist()  # type: ignore[assignment]
        out = [
            self._emit(slot, tokens[e], current[e])
            for e, slot in enumerate(slots)
            if slot in running
        ]
        self.steps += 1
        if self.steps % CLEAR_EVERY == 0:
            mx.clear_cache()
        return self._took(reading, counts), out

    def _guessing(self) -> dict[int, int]:
        """slot -> guesses this step, for each row that speculates: greedy, temperature alone
        or with top-p, top-k and min-p filters (not XTC, whose coin is no distribution of the
        logits), no processors, no logprobs, the model's own weights (others decode plainly
        in the same pass; a seeded row draws from its own key, which guesses would not keep
        reproducible)."""
        if self.drafter is None:
            return {}
        rows = {
            s: r
            for s, r in self._decoding.items()
            if (r.sampler in (greedy, self.sampler) or _drawn(r.sampler) is not None)
            and not r.processors
            and r.logprobs is None
            and r.adapter == 0
            and r.drafts != 0
        }
        k = depth(self.drafter.num_draft_tokens, len(rows))
        limits = {s: k if r.drafts is None else min(k, r.drafts) for s, r in rows.items()}
        if self.kv is not None:
            limits = {s: self._below_start(s, n) for s, n in limits.items()}
        self.drafter.forget({r.uid for r in self._decoding.values()})
        asked = {s: (rows[s].uid, n) for s, n in limits.items() if n > 0}
        guesses = self.drafter.depths(asked, len(self._decoding))
        return {s: n for s, n in guesses.items() if n > 0}

    def _below_start(self, slot: int, limit: int) -> int:
        """At most `limit` guesses of row `slot` on a cache quantized from `kv.start` on.
        While a row's history is below `start`, its verification pass reads it in full
        precision (a slot is quantized whole by the first call starting at `start` or
        later), which only the positions below `start` would in plain steps: the row keeps
        no guess whose logits come from a position at or past `start`, and the step that
        starts there quantizes its history, as a plain step does (`quantized_slots.py`)."""
        assert self.kv is not None
        length = self.slots.lengths[slot]
        return limit if length >= self.kv.start else min(limit, self.kv.start - 1 - length)

    def _speculate(self, guessing: dict[int, int], ended: tuple[int, float] | None) -> list[Token]:
        """A decode step whose speculating rows read their guesses too (`speculative.py`):
        each row's pending token and guesses in one pass, accepted row by row. Timed from
        the end of the step before it if that one was speculative too (it left the device
        idle), else from when the device is done with it."""
        assert self.drafter is not None
        slots = sorted(self._decoding)
        rows = [self._decoding[s] for s in slots]
        inputs, current = self._pending.take(slots)
        mx.eval(inputs, *arrays_of(current))
        started = ended[1] if ended is not None and ended[0] else time.perf_counter()
        first: list[int] = inputs.tolist()  # type: ignore[assignment]
        spec = [e for e, s in enumerate(slots) if s in guessing]
        k = max(guessing.values())
        drafted = [(slots[e], rows[e].uid, rows[e].history + [first[e]]) for e in spec]
        samplers = [_drawn(rows[e].sampler) for e in spec]
        guesses, drawn = self.drafter.draft(drafted, k, samplers)
        feed = mx.concatenate([inputs[:, None], mx.zeros((len(slots), k), inputs.dtype)], 1)
        feed[mx.array(spec), 1:] = guesses.astype(inputs.dtype)
        counts = [k + 1 if s in guessing else 1 for s in slots]
        self.slots.activate(self.slots.prepare(slots, k + 1, counts))
        self._select([r.adapter for r in rows])
        logits = self.model(feed, cache=self.slots.caches)
        self._select(())
        sampled, scores, context = self._pick(logits[:, 0, :], inputs, rows)
        limits = [guessing[slots[e]] for e in spec]
        kept, nexts = verify(logits[mx.array(spec)], guesses, drawn, samplers, limits)
        mx.eval(sampled, context, *arrays_of(scores))
        chosen: list[int] = sampled.tolist()  # type: ignore[assignment]
        guessed: list[list[int]] = guesses.tolist()  # type: ignore[assignment]
        out, at = [], {e: i for i, e in enumerate(spec)}
        for e, slot in enumerate(slots):
            emitted = [first[e]]
            if e in at:
                i = at[e]
                emitted += guessed[i][: kept[i]]
                chosen[e] = nexts[i]
                self.drafter.keep(slot, self.slots.lengths[slot] + 1 + kept[i])
                self.drafter.record(rows[e].uid, guessing[slot], kept[i])
            out += self._emit_all(slot, emitted, current[e])
        self._pending.set(slots, mx.array(chosen, dtype=mx.uint32), scores)
        self.steps += 1
        now = time.perf_counter()
        self.drafter.timed(k, len(rows), now - started)
        self._ended = (k, now)
        return out

    def _emit_all(self, slot: int, tokens: list[int], score: RowScores | None) -> list[Token]:
        """Row `slot`'s tokens of one step (`score`: the first one's), its cache growing by
        one for each, until one ends the row."""
        out: list[Token] = []
        for j, token in enumerate(tokens):
            self.slots.lengths[slot] += 1
            out.append(self._emit(slot, token, score if j == 0 else None))
            if out[-1].finish_reason is not None:
                break
        return out

    def _forward_mixed(
        self, decode: Planned, inputs: mx.array, reading: list[Row], counts: list[int]
    ) -> mx.array:
        """The logits of the decode rows, then of each chunk that ends its prompt: the chunks
        are one attention call (right-padded), the decode rows another."""
        assert self._mixed is not None
        width = max(counts)
        chunks = Part(
            self.slots.prepare([r.slot for r in reading], width),
            [r.prompt[:n] + [0] * (width - n) for r, n in zip(reading, counts, strict=True)],
            tuple(counts),
            tuple(r.adapter for r in reading),
        )
        rows = len(decode.call.rows)
        running = [self._decoding.get(slot) for slot in decode.call.rows]
        adapters = tuple(0 if r is None else r.adapter for r in running)
        parts = [Part(decode, [], (1,) * rows, adapters), chunks]
        picked = list(range(rows))
        at = rows
        for row, n in zip(reading, counts, strict=True):
            at += n
            if n == len(row.prompt):
                picked.extend([at - 1] * len(row.starting))
        logits = self._mixed(self.slots, parts, picked, inputs)
        assert logits is not None  # the decode rows are always picked
        return logits

    def _select(self, adapters: Sequence[int]) -> None:
        """The adapter each row of the next model call applies (none: the selection ends)."""
        if self._selection is not None:
            self._selection.rows(adapters)

    def _decode_slots(self) -> list[int]:
        """The slots a decode step reads: all up to the highest running one (free ones
        below it computed, unread: a slice of the store, no gather), or the running ones
        alone when they are few among many free slots or a prompt is being read into a
        stateful slot among them."""
        running = sorted(self._decoding)
        top = running[-1] + 1
        # A slot whose prompt is being read must not take a decode step's token into a state
        # that every token changes.
        busy = self.slots.stateful and any(r.slot < top for r in self._reading.values())
        if len(running) * 2 >= top and not busy:
            return list(range(top))
        return running

    def _emit(self, slot: int, token: int, score: RowScores | None) -> Token:
        """Row `slot`'s token; a row that ends leaves its slot with a copy of its cache."""
        row = self._decoding[slot]
        row.history.append(token)
        row.generated += 1
        finish = "length" if row.generated >= row.max_tokens else None
        if row.matcher.advance(token):
            finish = "stop"
        cache = history = None
        if finish is not None:
            cache, history = self.slots.extract(slot), row.history
            # Computed now: the copies must not wait on (and keep alive) the slot store.
            mx.async_eval(held(cache))
            del self._decoding[slot]
            self.slots.release(slot)
        logprobs = None if score is None else score.get()
        return Token(row.uid, token, logprobs, finish, cache, history)

    def _pick(
        self, logits: mx.array, inputs: mx.array, rows: Sequence[Row | None]
    ) -> tuple[mx.array, list[RowScores | None], list[mx.array]]:
        """The step's tokens from its logits: processors, guides, samplers and scores, row by
        row (a free slot's row samples with a shared sampler, unread)."""
        context: list[mx.array] = []
        if any(r is not None and r.processors for r in rows):
            processors = [r.processors if r is not None else None for r in rows]
            contexts = [r.context if r is not None else None for r in rows]
            logits, context = process_rows(logits, inputs, processors, contexts)
        shared = self._shared_sampler(rows)
        sampled = sample_rows(logits, [r.sampler if r is not None else shared for r in rows])
        if self.agree is not None:
            sampled = self.agree(sampled)
        asked = [(e, r.logprobs) for e, r in enumerate(rows) if r and r.logprobs is not None]
        return sampled, score_asked(logits, sampled, asked, len(rows)), context

    def _shared_sampler(self, rows: Sequence[Row | None]) -> Any:
        """A running row's sampler for the free slots, so that they add no sampler call of
        their own; never a seeded one (each of those draws for its own row only)."""
        live = (r.sampler for r in rows if r is not None)
        return next((s for s in live if not isinstance(s, SeededSampler)), self.sampler)

    def _read(self, chunks: Sequence[tuple[int, int]]) -> list[Read]:
        """One forward pass over the chunks alone (right-padded to the longest); prompts read
        to their end sample their first token and start decoding."""
        reading = [self._reading[uid] for uid, _ in chunks]
        counts = [n for _, n in chunks]
        width = max(counts)
        inputs = [r.prompt[:n] + [0] * (width - n) for r, n in zip(reading, counts, strict=True)]
        ends = [
            e for e, (r, n) in enumerate(zip(reading, counts, strict=True)) if n == len(r.prompt)
        ]
        at = [e for e in ends for _ in reading[e].starting]  # a row per choice
        planned = self.slots.prepare([r.slot for r in reading], width, counts)
        adapters = tuple(r.adapter for r in reading)
        part = Part(planned, inputs, tuple(counts), adapters)
        last = read_part(self.model, self._mixed, self.slots, part, at)
        if ends:
            rows, tokens = self._split([reading[e] for e in ends])
            read = mx.array(tokens, dtype=mx.uint32)
            assert last is not None
            sampled, scores, context = self._pick(last, read, rows)
            self._pending.set([r.slot for r in rows], sampled, scores)
            mx.async_eval(sampled, context, *arrays_of(scores), self.slots.arrays())
        else:
            mx.async_eval(self.slots.arrays())
        return self._took(reading, counts)

    def _split(self, ends: list[Row]) -> tuple[list[Row], list[int]]:
        """Rows whose prompts the pass just built reads to their end, each followed by its
        followers (the request's other choices): those take a slot each, with a copy of the
        prompt's cache, and decode. The rows, and the prompt's last token for each."""
        rows, last = [], []
        for row in ends:
            prompt = row.history + row.prompt
            rows.append(row)
            for follower in row.followers:
                follower.slot = self.slots.take()
                self.slots.copy(row.slot, follower.slot, len(prompt))
                follower.history = list(prompt)
                self._decoding[follower.slot] = follower
                rows.append(follower)
            last.extend([prompt[-1]] * len(row.starting))
            row.followers = []
        return rows, last

    def _took(self, reading: list[Row], counts: list[int]) -> list[Read]:
        """The chunks a forward pass read: their rows move on; rows read to the end decode."""
        self.slots.advance([r.slot for r in reading], counts)
        out = []
        for row, n in zip(reading, counts, strict=True):
            row.history.extend(row.prompt[:n])
            row.prompt = row.prompt[n:]
            end = not row.prompt
            cut = bool(row.cuts) and row.cuts[0] == len(row.history)
            if cut:
                row.cuts.pop(0)
            out.append(Read(row.uid, (row.total - len(row.prompt), row.total), end or cut, end))
            if end:
                del self._reading[row.uid]
                self._decoding[row.slot] = row
        return out
