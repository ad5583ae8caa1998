"""mlx-lm's LRU prompt cache with a search that costs the prompt's length, not the cache's size.

When a prompt shares only a prefix with the cached ones (a chat template's system turn, say),
mlx-lm's `PromptTrie.search` looks for the shortest cached prompt below the shared prefix by
walking every node under it, building a list per node: with 64 cached prompts of a few hundred
tokens that is tens of thousands of nodes, on the generation thread, for every admitted request.
Any cached prompt below the shared prefix serves equally (its cache is trimmed to the prefix),
so this search follows one branch down to the nearest entry.
"""

from __future__ import annotations

from typing import Any

from mlx_lm.models.cache import (
    KVCache,
    LRUPromptCache,
    PromptTrie,
    PromptTrieResult,
    QuantizedKVCache,
    can_trim_prompt_cache,
    make_prompt_cache,
    trim_prompt_cache,
)

from .mlx_lm_internals import TRIE_ENTRY, trie_roots, use_trie


class ShallowPromptTrie(PromptTrie):
    def search(self, model: Any, tokens: list[int]) -> PromptTrieResult:
        roots = trie_roots(self)
        if model not in roots:
            return PromptTrieResult(model, None, None, None, 0)
        node = roots[model]
        if not tokens and TRIE_ENTRY in node:
            return PromptTrieResult(model, [], None, None, 0)
        last, index = -1, 0
        while index < len(tokens) and tokens[index] in node:
            node = node[tokens[index]]
            if TRIE_ENTRY in node:
                last = index
            index += 1
        if last == len(tokens) - 1 >= 0:
            return PromptTrieResult(model, tokens, None, None, 0)
        shorter = tokens[: last + 1] if last > 0 else None
        longer = tokens[:index] + self._down(node) if index > 0 else None
        return PromptTrieResult(model, None, shorter, longer, index)

    @staticmethod
    def _down(node: dict[Any, Any]) -> list[int]:
        """The tokens from `node` to the nearest entry along its first branches."""
        path: list[int] = []
        while TRIE_ENTRY not in node:
            token = next(iter(node))
            path.append(token)
            node = node[token]
        return path


class PrefixCache(LRUPromptCache):
    def __init__(self, max_size: int):
        super().__init__(max_size=max_size)
        use_trie(self, ShallowPromptTrie())


def keeps_snapshots(model: Any, budget: int) -> bool:
    """Whether the prefix cache keeps snapshots of a prompt's cache (at the end of its system
    prompt and of the whole prompt) beside the cache of each answer: when the model's cache
    cannot always be trimmed back to a shorter prefix. Plain key-value layers can; a sliding
    window's cannot once it has wrapped around, a linear-attention layer's state never can, so
    on those models a cached longer prompt is no use to a request that shares only its start."""
    plain = all(isinstance(c, KVCache | QuantizedKVCache) for c in make_prompt_cache(model))
    return budget > 0 and not plain


class Prefixes:
    """One model's prefix cache as the generation thread uses it: the cache of a prompt's
    longest cached start, the caches of answers and snapshots kept, within a byte budget."""

    def __init__(self, model: Any, entries: int, budget: int, bounded: bool = True):
        """`bounded`: trim to the byte budget after each insert (ranks of a distributed model
        hold shares of different sizes: their entry count bounds them alike)."""
        self.entries, self.budget, self.bounded = entries, budget, bounded
        self.cache = PrefixCache(entries)
        # The cache keeps snapshots while prompts are read (`keeps_snapshots`).
        self.snapshots = keeps_snapshots(model, budget)

    def clear(self) -> None:
        self.cache = PrefixCache(self.entries)

    @property
    def nbytes(self) -> int:
        return int(self.cache.nbytes)

    @property
    def held(self) -> int:
        """Entries held: prompts, answers and snapshots."""
        return len(self.cache)

    def fetch(
        self, prompt: list[int], adapter: str | None = None
    ) -> tuple[list[Any] | None, list[int]]:
        """The cache of the longest cached start of `prompt` (None: none), and the tokens
        still to read (at least the last: its logits give the first token). Each adapter's
        prompts are apart: an adapter changes the keys and values of every token."""
        if self.budget <= 0:
            return None, prompt
        cache, rest = self.cache.fetch_nearest_cache(_key(adapter), prompt)
        if cache is None:
            return None, prompt
        if not rest:  # the whole prompt is cached: recompute its last token for the logits
            if not can_trim_prompt_cache(cache):
                return None, prompt
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        return cache, rest

    def store(
        self, tokens: list[int] | None, cache: list[Any] | None, adapter: str | None = None
    ) -> None:
        if self.budget <= 0 or not tokens or cache is None:
            return
        self.cache.insert_cache(_key(adapter), list(tokens), cache)
        if self.bounded:
            self.cache.trim_to(n_bytes=self.budget)


def _key(adapter: str | None) -> Any:
    """The prefix cache's key of an adapter's prompts (0: the model's own weights)."""
    return 0 if adapter is None else adapter
