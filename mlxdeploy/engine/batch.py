# mlx-lm declares these batch attributes Optional and fills them before any step runs:
# mypy: disable-error-code="assignment,index,arg-type,attr-defined,union-attr"
"""mlx-lm's BatchGenerator with a cheaper decode step.

mlx-lm normalizes every step's logits into log-probabilities (a logsumexp over the whole
vocabulary for every sequence) and splits them per sequence, because its API returns
logprobs. Greedy or temperature sampling does not need them: on a CPU the logsumexp alone was
~20 ms of a ~95 ms step at 32 sequences (BENCHMARKS.md). Here the samplers receive raw logits
(see `sampling.py`: each sampler normalizes only if it must), and only the rows of requests
that ask for log-probabilities are normalized (see `logprobs.py`); a step's responses carry
`TokenScores` for those rows and None for the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, GenerationBatch

from .constraints import Guide, mask_guided_rows
from .logprobs import RowScores, arrays_of, score_rows


class LogitsGenerationBatch(GenerationBatch):
    # uid -> how many alternatives its request asked for; only those rows are normalized.
    # The generator gives the batch its own mapping (FastBatchGenerator.__init__).
    logprobs: Mapping[int, int] = MappingProxyType({})

    def _step(self) -> tuple[list[int], list[Any]]:  # TokenScores, or None: not asked
        self._current_tokens = self._next_tokens
        self._current_logprobs = self._next_logprobs
        inputs = self._current_tokens
        logits = self.model(inputs[:, None], cache=self.prompt_cache)[:, -1, :]
        token_context: list[mx.array] = []
        if any(self.logits_processors):
            logits, token_context = self._process(logits, inputs)
        self._next_tokens = self._sample(logits)
        self._next_logprobs = self._score(logits, self._next_tokens)
        mx.async_eval(self._next_tokens, token_context, *arrays_of(self._next_logprobs))
        current = self._first_scores(self._current_logprobs, inputs)
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
        asked = self._asked()
        if not asked:
            return [None] * len(self.uids)
        if len(asked) < len(self.uids):
            rows = mx.array([e for e, _ in asked])
            logits, sampled = logits[rows], sampled[rows]
        return score_rows(logits, sampled, asked, len(self.uids))

    def _first_scores(self, current: list[Any], tokens: mx.array) -> list[RowScores | None]:
        """A sequence's first token was sampled by mlx-lm's own step, right after its prompt,
        which left the whole normalized row: reduce it like the others (rows that did not ask
        drop theirs)."""
        if not self.logprobs:
            return [None] * len(current)
        full = {e: row for e, row in enumerate(current) if isinstance(row, mx.array)}
        out = [None if e in full else row for e, row in enumerate(current)]
        asked = [(e, k) for e, k in self._asked() if e in full]
        if not asked:
            return out
        rows = [e for e, _ in asked]
        stacked = mx.stack([full[e] for e in rows])
        firsts = score_rows(stacked, tokens[mx.array(rows)], asked, len(current), normalized=True)
        for e in rows:
            out[e] = firsts[e]
        return out

    def _process(self, logits: mx.array, inputs: mx.array) -> tuple[mx.array, list[mx.array]]:
        """Each row's logits processors; the constrained rows' guides go last, all at once
        (they need the tokens sampled last, so a batch with guides waits for them here)."""
        rows: list[mx.array] = []
        token_context: list[mx.array] = []
        guided: list[tuple[int, Guide]] = []
        for e in range(len(self.uids)):
            row = logits[e : e + 1]
            processors = self.logits_processors[e] or ()
            guided.extend((e, p) for p in processors if isinstance(p, Guide))
            others = [p for p in processors if not isinstance(p, Guide)]
            if others:
                context = self._token_context[e].update_and_fetch(inputs[e : e + 1])
                token_context.append(context)
                for processor in others:
                    row = processor(context, row)
            rows.append(row)
        if token_context:  # some row has processors of its own
            logits = mx.concatenate(rows, axis=0)
        if guided:  # start the forward pass, then compute the masks while it runs
            mx.async_eval(logits)
            tokens = inputs.tolist()
            for e, guide in guided:
                guide.advance(tokens[e])
            logits = mask_guided_rows(logits, guided)
        return logits, token_context

    def _sample(self, logits: mx.array) -> mx.array:
        """One call per distinct sampler object, on the rows that hold it: a batch of many
        requests with shared settings and a few with their own (seeded) samplers costs one
        call per group, not one per row."""
        samplers = [s or self.fallback_sampler for s in self.samplers] or [self.fallback_sampler]
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


class FastBatchGenerator(BatchGenerator):
    def __init__(self, model: Any, **kwargs: Any):
        super().__init__(model, **kwargs)
        # Sequences that finish prefill are merged into this batch object, so its class
        # decides how every decode step runs.
        self._generation_batch = LogitsGenerationBatch.empty(self.model, self.sampler)
        self._logprobs: dict[int, int] = {}
        self._generation_batch.logprobs = self._logprobs

    @property
    def waiting(self) -> int:
        """Sequences inserted but not yet given a slot in the prompt or decode batch."""
        return len(self._unprocessed_sequences)

    def insert(
        self,
        prompts: list[list[int]],
        *args: Any,
        logprobs: Sequence[int | None] | None = None,
        **kwargs: Any,
    ) -> list[int]:
        """mlx-lm's insert; `logprobs`, one per prompt: None, or how many alternatives that
        request's tokens report (its responses then carry `TokenScores`)."""
        uids: list[int] = super().insert(prompts, *args, **kwargs)
        for uid, k in zip(uids, logprobs or [None] * len(uids), strict=True):
            if k is not None:
                self._logprobs[uid] = k
        return uids

    def remove(self, uids: Sequence[int], return_prompt_caches: bool = False) -> Any:
        for uid in uids:
            self._logprobs.pop(uid, None)
        return super().remove(uids, return_prompt_caches)

    def _next(self) -> Any:
        prompt_responses, responses = super()._next()
        if self._logprobs:
            for r in responses:
                if r.finish_reason is not None:
                    self._logprobs.pop(r.uid, None)
        return prompt_responses, responses
