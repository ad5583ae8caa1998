"""How many waiting inputs the next forward pass reads: a plan made of token counts only, so
that it is tested without MLX."""

from __future__ import annotations

from collections.abc import Iterable


def batch_rows(lengths: Iterable[int], max_rows: int, max_tokens: int) -> int:
    """How many of the waiting inputs (their token counts, oldest first) go into the next
    forward pass: the longest prefix of at most `max_rows` whose padded size (rows times the
    longest) fits `max_tokens`. The oldest always goes, alone if it is longer than that (it is
    then read in chunks); 0 only when nothing waits."""
    rows, longest = 0, 0
    for length in lengths:
        widest = max(longest, length)
        if rows == max_rows or (rows > 0 and (rows + 1) * widest > max_tokens):
            break
        rows, longest = rows + 1, widest
    return rows
