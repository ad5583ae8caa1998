"""How a request enters a generation loop: its sampler and logits processors, its thinking,
grammar and tool-call readers, the start of its prompt the prefix cache already holds, and the
segments still to read."""

from __future__ import annotations

import copy
from typing import Any

import mlx.core as mx
from mlx_lm.generate import StopSequences
from mlx_lm.models.cache import make_prompt_cache

from .adapters import AdapterError, bank_of
from .api import PromptRejected
from .constraints import Grammars
from .job import Job
from .loops import Generator
from .prefix_cache import Prefixes
from .reasoning import ThinkingFormat
from .sampling import SamplerCache, Vocabulary
from .tool_calls import CallSplitter
from .tool_formats import ToolFormat

# Where a model's cache cannot be trimmed back, the prefix cache also keeps its cache every
# this many prompt tokens: a request that shares a long start with an earlier one but not its
# system prompt's end or its whole prompt (an edited conversation, a shared document) reads on
# from the last block it shares.
SNAPSHOT_BLOCK = 4096


class Admission:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        prefixes: Prefixes,
        prefill_step: int,
        tool_format: ToolFormat | None = None,
        thinking: ThinkingFormat | None = None,
        last_apart: bool = False,
    ):
        """`last_apart`: the loop reads a prompt's last token with the rest unless it is a
        segment of its own (mlx-lm's batch generator always reads it apart)."""
        self.model = model
        self.last_apart = last_apart
        self.prefixes = prefixes
        self.prefill_step = prefill_step
        self._samplers = SamplerCache()
        self._vocabulary = Vocabulary.of(model, tokenizer)
        self._grammars = Grammars(tokenizer, self._vocabulary.size)
        self._tool_format = tool_format
        self._thinking = thinking
        stops = set(tokenizer.eos_token_ids) | set(thinking.stops if thinking else ())
        self.stop_sequences = StopSequences([[t] for t in sorted(stops)])
        self._bank = bank_of(model)

    def prepare(self, job: Job) -> tuple[Any, list[Any]]:
        """The job's sampler and logits processors; its thinking, guide and tool-call readers.
        Raises PromptRejected before anything is inserted."""
        p = job.params
        self.adapter_args(job)  # an adapter the model does not serve is refused first
        sampler, processors = self._samplers.choose(p, self._vocabulary)
        fmt, gate = self._thinking, None
        if fmt is not None:
            gate = fmt.gate(job.prompt)
            if p.thinking_budget is not None:
                processors = [*processors, fmt.budget(p.thinking_budget, job.prompt)]
        job.guide = self._grammars.guide(p, self._tool_format, gate)
        if fmt is not None and p.thinking_apart and (job.guide is None or gate is not None):
            job.thought = fmt.splitter(job.prompt, job.text.detokenizer.decode)
        if job.guide is not None:  # last: the mask is the final word on what may come next
            processors = [*processors, job.guide]
        if p.tools is not None and self._tool_format is not None:
            job.calls = CallSplitter(self._tool_format, p.tools.tools)
        return sampler, processors

    def insert(self, generator: Generator, job: Job, shared: list[Any] | None = None) -> None:
        """`shared`: a cache of the prompt but its last token, copied for this job."""
        p = job.params
        sampler, processors = self.prepare(job)
        if shared is None:
            cache, rest = self.prefixes.fetch(job.prompt, p.adapter)
            job.cached_tokens = len(job.prompt) - len(rest)
        else:
            cache, rest = copy.deepcopy(shared), job.prompt[-1:]
        (job.uid,) = generator.insert_segments(
            [self.segments(job, rest)],
            max_tokens=[p.max_tokens],
            caches=[cache] if cache is not None else None,
            all_tokens=[job.prompt[: len(job.prompt) - len(rest)]],
            samplers=[sampler],
            logits_processors=[processors],
            stop_sequences=[self.stop_sequences],
            logprobs=[p.logprobs],
            **self.adapter_args(job),
            **draft_args(job),
        )

    def adapter_args(self, job: Job, n: int = 1) -> dict[str, Any]:
        """What tells the generator the adapter of the job's rows (nothing on a model without
        adapters); PromptRejected for an adapter the model does not serve."""
        name = job.params.adapter
        if self._bank is None:
            if name is not None:
                raise PromptRejected(f"this model serves no adapters (asked: '{name}')")
            return {}
        try:
            return {"adapters": [self._bank.index_of(name)] * n}
        except AdapterError as error:
            raise PromptRejected(str(error)) from None

    def insert_shared(self, generator: Generator, chosen: list[tuple[Job, Any, list[Any]]]) -> None:
        """Choices of one request (each with its prepared sampler and processors) whose prompt
        the generator reads once."""
        first, n = chosen[0][0], len(chosen)
        prompt = first.prompt
        cache, rest = self.prefixes.fetch(prompt, first.params.adapter)
        uids = generator.insert_segments(
            [[rest]] * n,
            max_tokens=[job.params.max_tokens for job, _, _ in chosen],
            caches=[cache] * n if cache is not None else None,
            all_tokens=[prompt[: len(prompt) - len(rest)]] * n,
            samplers=[sampler for _, sampler, _ in chosen],
            logits_processors=[processors for _, _, processors in chosen],
            stop_sequences=[self.stop_sequences] * n,
            logprobs=[job.params.logprobs for job, _, _ in chosen],
            shared=True,
            **self.adapter_args(first, n),
            **draft_args(first, n),
        )
        for (job, _, _), uid in zip(chosen, uids, strict=True):
            job.uid, job.cached_tokens = uid, len(prompt) - len(rest)

    def prefill(self, prompt: list[int]) -> tuple[list[Any], int]:
        """A cache holding all of `prompt` but its last token (the prefix cache's part
        reused), and how many tokens came from the prefix cache: for a loop that cannot read
        one prompt for several choices itself."""
        cache, rest = self.prefixes.fetch(prompt)
        cached = len(prompt) - len(rest)
        if cache is None:
            cache = make_prompt_cache(self.model)
        todo, step = rest[:-1], self.prefill_step
        for at in range(0, len(todo), step):
            self.model(mx.array(todo[at : at + step])[None], cache=cache)
            mx.eval([c.state for c in cache])
        return cache, cached

    def segments(self, job: Job, rest: list[int]) -> list[list[int]]:
        """The prompt's tokens still to read, split where the prefix cache keeps snapshots:
        the end of the system prompt, every `SNAPSHOT_BLOCK` tokens, and the prompt's end but
        its last token (mlx-lm's batch generator reads that token apart; on the engine's own
        loop it is a segment of its own, `last_apart`)."""
        read, last = len(job.prompt) - len(rest), len(job.prompt) - 1
        if not self.prefixes.snapshots or read >= last:
            job.snapshots = []
            return [rest]
        blocks = range(SNAPSHOT_BLOCK, last, SNAPSHOT_BLOCK)
        cuts = sorted(c for c in {job.boundary, *blocks} if read < c < last)
        job.snapshots = [*cuts, last]
        pieces, at = [], read
        for cut in cuts:
            pieces.append(job.prompt[at:cut])
            at = cut
        tail = job.prompt[at:]
        return [*pieces, tail[:-1], tail[-1:]] if self.last_apart else [*pieces, tail]


def draft_args(job: Job, n: int = 1) -> dict[str, Any]:
    """What tells the generator how many tokens a draft guesses for the job's rows (nothing
    when the request leaves it to the model)."""
    asked = job.params.num_draft_tokens
    return {} if asked is None else {"drafts": [asked] * n}
