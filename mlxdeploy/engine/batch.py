# mlx-lm declares these batch attributes Optional and fills them before any step runs:
# mypy: disable-error-code="assignment,index,arg-type,attr-defined,union-attr"
"""mlx-lm's BatchGenerator with a cheaper decode step.

mlx-lm normalizes every step's logits into log-probabilities (a logsumexp over the whole
vocabulary for every sequence) and splits them per sequence, because its API returns
logprobs. mlxdeploy returns none, and greedy or temperature sampling does not need them: on a
CPU the logsumexp alone was ~20 ms of a ~95 ms step at 32 sequences (BENCHMARKS.md). Here the
samplers receive raw logits (see `sampling.py`: each sampler normalizes only if it must).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, GenerationBatch


class LogitsGenerationBatch(GenerationBatch):
    def _step(self) -> tuple[list[int], list[Any]]:
        self._current_tokens = self._next_tokens
        self._current_logprobs = self._next_logprobs
        inputs = self._current_tokens
        logits = self.model(inputs[:, None], cache=self.prompt_cache)[:, -1, :]
        token_context = []
        if any(self.logits_processors):
            rows = []
            for e in range(len(self.uids)):
                row = logits[e : e + 1]
                processors = self.logits_processors[e] or ()
                if processors:
                    context = self._token_context[e].update_and_fetch(inputs[e : e + 1])
                    token_context.append(context)
                    for processor in processors:
                        row = processor(context, row)
                rows.append(row)
            logits = mx.concatenate(rows, axis=0)
        self._next_tokens = self._sample(logits)
        self._next_logprobs = [None] * len(self.uids)
        mx.async_eval(self._next_tokens, token_context)
        mx.eval(inputs)
        tokens = inputs.tolist()
        for history, token in zip(self.tokens, tokens, strict=True):
            history.append(token)
        return tokens, [None] * len(tokens)

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

    @property
    def waiting(self) -> int:
        """Sequences inserted but not yet given a slot in the prompt or decode batch."""
        return len(self._unprocessed_sequences)
