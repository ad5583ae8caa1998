"""Incremental detokenization and stop words, checked against decoding everything at once."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mlxdeploy.engine.text import StopMatcher, TextStream, fast_decode

# A toy byte-level vocabulary: multi-byte characters split across tokens, like byte-level BPE.
VOCAB = [b" ", b"a", b"b", b"\n", b"\xc3", b"\xa9", b" the", b"</s>", b"<", b"/", b"s", b">"]


def decode(tokens: list[int]) -> str:
    return b"".join(VOCAB[t] for t in tokens).decode("utf-8", errors="replace")


def run(tokens: list[int], stop: tuple[str, ...]) -> tuple[str, bool]:
    stream = TextStream.create(decode, stop)
    out = ""
    for token in tokens:
        out += stream.add(token)
        if stream.stopped:
            return out, True
    return out + stream.finish(), False


def expected(tokens: list[int], stop: tuple[str, ...]) -> str:
    text = decode(tokens)
    hits = [text.find(w) for w in stop if w in text]
    return text[: min(hits)] if hits else text


@given(st.lists(st.integers(0, len(VOCAB) - 1), max_size=40))
def test_pieces_join_to_the_whole_decode(tokens: list[int]) -> None:
    assert run(tokens, ())[0] == decode(tokens)


@given(
    st.lists(st.integers(0, len(VOCAB) - 1), max_size=40),
    st.lists(st.sampled_from(["</s>", "\n\n", "ab", "é", " the"]), max_size=3),
)
def test_stop_words_cut_at_the_first_occurrence(tokens: list[int], stop: list[str]) -> None:
    words = tuple(stop)
    text, stopped = run(tokens, words)
    assert text == expected(tokens, words)
    assert stopped == any(w in decode(tokens) for w in words)


def test_leading_space_of_the_first_token_is_kept() -> None:
    stream = TextStream.create(decode, ())
    assert stream.add(6) == " the"


def test_partial_stop_word_is_held_back_then_released() -> None:
    matcher = StopMatcher(("</s>",))
    assert matcher.feed("hello </") == "hello "
    assert matcher.feed("b>") == "</b>"
    assert matcher.feed("</s") == ""
    assert matcher.feed("> tail") == ""
    assert matcher.stopped


def test_incomplete_utf8_is_held_until_complete() -> None:
    stream = TextStream.create(decode, ())
    assert stream.add(4) == ""
    assert stream.add(5) == "é"


def test_fast_decode_gives_the_tokenizers_own_text(demo_dir: Path) -> None:
    """The Rust decode stands in for transformers' only where it gives the same text: every
    special token, byte pieces, spaces; and a tokenizer that cleans up spaces keeps its own."""
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(demo_dir)
    decode = fast_decode(tokenizer)
    assert isinstance(decode, partial), "the demo's fast tokenizer should get the Rust decode"
    special = sorted(tokenizer.all_special_ids)
    windows = [special, [28, 1035, 253, 216], list(range(0, 400, 7)), list(range(49000, 49152))]
    windows += [[t] for t in range(200, 260)]
    for ids in windows:
        assert decode(ids) == tokenizer.decode(ids), ids
    tokenizer._tokenizer.clean_up_tokenization_spaces = True
    assert fast_decode(tokenizer) == tokenizer.decode
