"""mlx-lm's private names, all in this module: the rest of mlxdeploy uses the public names
below, so that a new mlx-lm changes only this file.

Pinned to mlx-lm 0.32 (pyproject: `mlx-lm>=0.32.2,<0.33`). tests/test_mlx_lm_internals.py checks
that every name in `PRIVATE` exists in the installed mlx-lm, that the hooks are still called
where this module expects, and that no other module of mlxdeploy names one of them.

- `GenerationBatchBase`, `BatchGeneratorBase`: mlx-lm's decode batch and generator, their
  private state readable and writable under the same names without the underscore (a property:
  one call, no copy), their private hooks forwarded to public methods
  (`_step` to `step`, `_next` to `next_step`) that subclasses override.
- `cache_end`, `set_cache_end`: where every row of a `BatchKVCache` ends.
- `trie_roots`, `use_trie`, `TRIE_ENTRY`: the nodes of a `PromptTrie`, the trie of an
  `LRUPromptCache`.
- `wrapped_tokenizer`, `infer_tool_parser`: the Hugging Face tokenizer in mlx-lm's
  `TokenizerWrapper`, and mlx-lm's guess of a model's tool parser.
- `model_classes`: the model and arguments classes mlx-lm builds for a config (the default
  of `mlx_lm.utils.load_model`'s `get_model_classes`, for callers that wrap it).
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

from mlx_lm.generate import BatchGenerator, GenerationBatch
from mlx_lm.models.cache import BatchKVCache, LRUPromptCache, PromptTrie

# Every private name of mlx-lm used here, by what holds it (a class's instances, or a module).
PRIVATE: dict[str, tuple[str, ...]] = {
    "mlx_lm.generate.GenerationBatch": (
        "_step", "_current_tokens", "_current_logprobs", "_next_tokens", "_next_logprobs",
        "_token_context", "_num_tokens", "_matchers",
    ),
    "mlx_lm.generate.BatchGenerator": (
        "_next", "_make_batch", "_generation_batch", "_prompt_batch", "_unprocessed_sequences",
        "_currently_processing", "_counters",
    ),
    "mlx_lm.models.cache.BatchKVCache": ("_idx",),
    "mlx_lm.models.cache.PromptTrie": ("_trie",),
    "mlx_lm.models.cache.LRUPromptCache": ("_trie",),
    "mlx_lm.tokenizer_utils.TokenizerWrapper": ("_tokenizer",),
    "mlx_lm.tokenizer_utils": ("_infer_tool_parser",),
    "mlx_lm.utils": ("_get_classes",),
}  # fmt: skip
TRIE_ENTRY = "__value__"  # the key of a PromptTrie node's entry


def _exposed(name: str) -> Any:
    """mlx-lm's private attribute `name`, read and written under a public name."""
    return property(attrgetter(name), lambda self, value: setattr(self, name, value))


class GenerationBatchBase(GenerationBatch):
    """mlx-lm's decode batch; a subclass's `step` replaces mlx-lm's, which `next` and
    `__init__` call."""

    current_tokens = _exposed("_current_tokens")  # the tokens the last step read
    current_logprobs = _exposed("_current_logprobs")
    next_tokens = _exposed("_next_tokens")  # sampled, read by the next step
    next_logprobs = _exposed("_next_logprobs")
    token_context = _exposed("_token_context")  # per row: the logits processors' TokenBuffer
    num_tokens = _exposed("_num_tokens")  # per row: tokens generated
    matchers = _exposed("_matchers")  # per row: its stop sequences' matcher

    def _step(self) -> Any:
        return self.step()

    def step(self) -> Any:
        """One forward pass: (each row's token read, each row's log-probabilities)."""
        return super()._step()


class BatchGeneratorBase(BatchGenerator):
    """mlx-lm's batch generator; a subclass's `next_step` replaces mlx-lm's schedule, which
    `next` and `next_generated` call."""

    generation_batch = _exposed("_generation_batch")  # the decode batch
    prompt_batch = _exposed("_prompt_batch")  # the prompts being read
    # Per prompt being read, [segments left, tokens read, tokens in all].
    currently_processing = _exposed("_currently_processing")
    unprocessed_sequences = _exposed("_unprocessed_sequences")  # inserted, not yet read
    counters = _exposed("_counters")  # BatchCounters: tokens, steps and times, for `stats`

    def _next(self) -> Any:
        return self.next_step()

    def next_step(self) -> Any:
        """(prompt responses, generation responses) of one call of `next`."""
        return super()._next()

    def make_batch(self, n: int) -> Any:
        """The next `n` unprocessed sequences as a prompt batch."""
        return self._make_batch(n)


def cache_end(cache: BatchKVCache) -> int:
    """The position where every row of a batch cache ends (its rows are right-aligned)."""
    return cache._idx


def set_cache_end(cache: BatchKVCache, end: int) -> None:
    cache._idx = end


def trie_roots(trie: PromptTrie) -> dict[Any, dict[Any, Any]]:
    """model -> the root node of its prompts: nested dicts by token, an entry under
    `TRIE_ENTRY`."""
    return trie._trie  # type: ignore[no-any-return]


def use_trie(cache: LRUPromptCache, trie: PromptTrie) -> None:
    """`trie` in place of the prompt cache's own (on a cache with no entries yet)."""
    cache._trie = trie


def wrapped_tokenizer(tokenizer: Any) -> Any | None:
    """The Hugging Face tokenizer inside mlx-lm's TokenizerWrapper; None when there is none."""
    return getattr(tokenizer, "_tokenizer", None)


def infer_tool_parser(tokenizer: Any) -> str | None:
    """The name of the mlx-lm tool parser that fits the tokenizer's chat template and
    vocabulary, as mlx-lm infers it; raises when the tokenizer has nothing to look at."""
    from mlx_lm.tokenizer_utils import _infer_tool_parser

    return _infer_tool_parser(tokenizer)  # type: ignore[no-any-return]


def model_classes(config: dict[str, Any]) -> tuple[type[Any], type[Any]]:
    """(model class, model args class) of an mlx-lm config, as mlx-lm's loader picks them."""
    from mlx_lm.utils import _get_classes

    return _get_classes(config)  # type: ignore[no-any-return]
