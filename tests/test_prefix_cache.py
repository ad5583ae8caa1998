"""engine/prefix_cache.py: the same answers as mlx-lm's trie search, walking one branch."""

from __future__ import annotations

import random

from mlx_lm.models.cache import PromptTrie

from mlxdeploy.engine.mlx_lm_internals import trie_roots
from mlxdeploy.engine.prefix_cache import ShallowPromptTrie


def _tries(prompts: list[list[int]]) -> tuple[PromptTrie, ShallowPromptTrie]:
    theirs, ours = PromptTrie(), ShallowPromptTrie()
    for prompt in prompts:
        theirs.add(0, prompt, tuple(prompt))
        ours.add(0, prompt, tuple(prompt))
    return theirs, ours


def test_search_agrees_with_mlx_lm_on_exact_shorter_and_shared_prefixes() -> None:
    rng = random.Random(0)
    template = [1, 2, 3, 4, 5]
    tails = [[rng.randrange(6, 12) for _ in range(rng.randrange(1, 30))] for _ in range(40)]
    cached = [template + tail for tail in tails]
    theirs, ours = _tries(cached)
    queries = cached[:10] + [c[: len(c) // 2] for c in cached[10:20]]
    queries += [template + [rng.randrange(6, 12) for _ in range(20)] for _ in range(30)]
    queries += [[99, 1, 2], [], template[:2]]
    for query in queries:
        expected, found = theirs.search(0, query), ours.search(0, query)
        assert (found.exact, found.shorter, found.common_prefix) == (
            expected.exact,
            expected.shorter,
            expected.common_prefix,
        ), query
        assert (found.longer is None) == (expected.longer is None), query
        if found.longer is not None:  # any cached prompt below the shared prefix serves
            assert found.longer[: found.common_prefix] == query[: found.common_prefix]
            assert ours.get(0, found.longer) == tuple(found.longer)


def test_search_walks_one_branch_below_the_shared_prefix() -> None:
    """Counted through the nodes it reads: not the whole subtree under the template."""
    template = [1, 2, 3]
    cached = [template + [10 + i] + list(range(100, 150)) for i in range(50)]
    _, ours = _tries(cached)
    reads = 0

    class Counting(dict):  # type: ignore[type-arg]
        def __getitem__(self, key: object) -> object:
            nonlocal reads
            reads += 1
            return super().__getitem__(key)

    def wrap(node: dict) -> Counting:  # type: ignore[type-arg]
        return Counting({k: wrap(v) if isinstance(v, dict) else v for k, v in node.items()})

    roots = trie_roots(ours)
    roots[0] = wrap(roots[0])
    result = ours.search(0, template + [7, 8])
    assert result.common_prefix == 3 and result.longer is not None
    assert reads <= len(template) + 52  # the prefix, then one cached prompt's tail
