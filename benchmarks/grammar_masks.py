"""Measure constrained-decoding grammar libraries for structured outputs.

For one library (llguidance, xgrammar or outlines-core) this prints:

* compile time of a realistic JSON Schema and of a tool-call schema, cold and
  through the library's own reuse mechanism (cache, shared index, clone);
* per request-step cost of filling the token bitmask at batch 1 and batch 32,
  of advancing the matcher with the token, and of applying the bitmask to an
  MLX float32 logits array of shape (batch, vocab);
* a feature matrix, each feature checked by feeding a valid and an invalid
  text through the matcher (a feature "works" only when the valid text ends
  with EOS allowed and the invalid one is refused).

Decode steps use real tokens that follow the grammar: each request gets its own
random valid document, tokenized by the model's tokenizer, and the matchers are
advanced through those tokens one step at a time.

Usage::

    python benchmarks/grammar_masks.py TOKENIZER_DIR --library llguidance

It is a standalone tool: neither the package nor its tests import it. The
grammar libraries are not dependencies of the package; install the one to
measure next to mlx, transformers and numpy.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from typing import Any

import numpy as np

ITEM = {
    "type": "object",
    "properties": {
        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
        "qty": {"type": "integer", "minimum": 1, "maximum": 99},
        "price": {"type": "number", "minimum": 0, "maximum": 10000},
    },
    "required": ["sku", "qty", "price"],
    "additionalProperties": False,
}

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 1000000},
        "status": {"enum": ["pending", "shipped", "delivered", "cancelled"]},
        "customer": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 40},
                "email": {"type": "string", "pattern": "^[a-z0-9.]+@[a-z0-9]+\\.[a-z]{2,4}$"},
                "tier": {"enum": ["free", "pro", "enterprise"]},
            },
            "required": ["name", "email", "tier"],
            "additionalProperties": False,
        },
        "items": {"type": "array", "minItems": 1, "maxItems": 5, "items": {"$ref": "#/$defs/item"}},
        "total": {"type": "number", "minimum": 0, "maximum": 100000},
        "gift": {"type": "boolean"},
        "notes": {"anyOf": [{"type": "string", "maxLength": 80}, {"type": "null"}]},
        "version": {"const": 2},
    },
    "required": ["id", "status", "customer", "items", "total", "gift", "notes", "version"],
    "additionalProperties": False,
    "$defs": {"item": ITEM},
}

FUNCTIONS: dict[str, dict[str, Any]] = {
    "get_weather": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "search_web": {
        "type": "object",
        "properties": {
            "query": {"type": "string", "maxLength": 60},
            "max_results": {"type": "integer", "minimum": 1, "maximum": 20},
        },
        "required": ["query", "max_results"],
        "additionalProperties": False,
    },
    "create_event": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 40},
            "day": {"type": "string", "pattern": "^2026-[01][0-9]-[0-3][0-9]$"},
            "attendees": {
                "type": "array",
                "items": {"type": "string", "maxLength": 30},
                "maxItems": 4,
            },
        },
        "required": ["title", "day", "attendees"],
        "additionalProperties": False,
    },
    "convert_currency": {
        "type": "object",
        "properties": {
            "amount": {"type": "number", "minimum": 0},
            "source": {"enum": ["EUR", "USD", "GBP", "JPY"]},
            "target": {"enum": ["EUR", "USD", "GBP", "JPY"]},
        },
        "required": ["amount", "source", "target"],
        "additionalProperties": False,
    },
}


def tool_call_schema() -> dict[str, Any]:
    """One of several functions, as `{"name": ..., "arguments": {...}}`."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, params in FUNCTIONS.items()
    ]
    return {"anyOf": options}


WORDS = [
    "alpha",
    "Berlin",
    "blue",
    "quick fox",
    "Ünïcode",
    "north",
    "42 units",
    "tea",
    "O'Brien",
    "zeta",
]


def _text(rng: random.Random, limit: int) -> str:
    out = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
    return out[:limit]


def random_order(rng: random.Random) -> dict[str, Any]:
    items: list[dict[str, Any]] = [
        {
            "sku": "".join(rng.choice("ABCXYZ") for _ in range(3)) + f"-{rng.randint(0, 9999):04d}",
            "qty": rng.randint(1, 99),
            "price": round(rng.uniform(0, 500), 2),
        }
        for _ in range(rng.randint(1, 5))
    ]
    return {
        "id": rng.randint(1, 1000000),
        "status": rng.choice(["pending", "shipped", "delivered", "cancelled"]),
        "customer": {
            "name": _text(rng, 40),
            "email": f"user{rng.randint(1, 999)}@example.com",
            "tier": rng.choice(["free", "pro", "enterprise"]),
        },
        "items": items,
        "total": min(round(sum(i["qty"] * i["price"] for i in items), 2), 100000),
        "gift": rng.random() < 0.5,
        "notes": _text(rng, 80) if rng.random() < 0.5 else None,
        "version": 2,
    }


def random_call(rng: random.Random) -> dict[str, Any]:
    name = rng.choice(list(FUNCTIONS))
    options: dict[str, dict[str, Any]] = {
        "get_weather": {"city": _text(rng, 40), "unit": rng.choice(["celsius", "fahrenheit"])},
        "search_web": {"query": _text(rng, 60), "max_results": rng.randint(1, 20)},
        "create_event": {
            "title": _text(rng, 40),
            "day": f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "attendees": [_text(rng, 30) for _ in range(rng.randint(0, 4))],
        },
        "convert_currency": {
            "amount": round(rng.uniform(0, 9999), 2),
            "source": rng.choice(["EUR", "USD"]),
            "target": rng.choice(["GBP", "JPY"]),
        },
    }
    return {"name": name, "arguments": options[name]}


# Feature checks: (grammar kind, grammar, valid text, invalid text).
FEATURES: dict[str, tuple[str, Any, str, str]] = {
    "enum": ("schema", {"enum": ["red", "green"]}, '"green"', '"blue"'),
    "const": ("schema", {"const": "fixed"}, '"fixed"', '"other"'),
    "anyOf": ("schema", {"anyOf": [{"type": "integer"}, {"type": "null"}]}, "null", '"x"'),
    "$ref/$defs": (
        "schema",
        {"$defs": {"n": {"type": "integer"}}, "type": "array", "items": {"$ref": "#/$defs/n"}},
        "[1, 2]",
        '["a"]',
    ),
    "integer min/max": ("schema", {"type": "integer", "minimum": 3, "maximum": 7}, "5", "9"),
    "number min/max": ("schema", {"type": "number", "minimum": 0.5, "maximum": 2.5}, "1.25", "3.5"),
    "minItems/maxItems": (
        "schema",
        {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2},
        "[1, 2]",
        "[1, 2, 3]",
    ),
    "string pattern": (
        "schema",
        {"type": "string", "pattern": "^[A-Z]{2}[0-9]$"},
        '"AB1"',
        '"ab1"',
    ),
    "minLength/maxLength": (
        "schema",
        {"type": "string", "minLength": 2, "maxLength": 3},
        '"abc"',
        '"abcd"',
    ),
    "additionalProperties false": (
        "schema",
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
        '{"a": 1}',
        '{"a": 1, "b": 2}',
    ),
    "raw UTF-8 in strings": ("schema", {"type": "string"}, '"Ünïcode 日本"', '"a'),
    "\\u escapes of non-ASCII in strings": (
        "schema",
        {"type": "string"},
        '"\\u00dcn\\u00efcode"',
        '"\\u00zz"',
    ),
    "format date-time": (
        "schema",
        {"type": "string", "format": "date-time"},
        '"2026-12-01T10:00:00Z"',
        '"soon"',
    ),
    "EOS refused until the document is complete": (
        "schema",
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        '{"a": 1}',
        '{"a": 1',
    ),
    "json_object (any JSON object)": (
        "json_object",
        None,
        '{"a": [1, {"b": {"c": [true, null, {"d": "e"}]}}]}',
        '{"a": }',
    ),
    "lazy: free text, then <tool_call> grammar": (
        "lazy",
        None,
        "Let me check. <tool_call>"
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>',
        'Let me check. <tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
    ),
    "lazy: free text only, no call": ("lazy", None, "It is sunny today, no tool needed.", ""),
}

TRIGGER = "<tool_call>"
END_TAG = "</tool_call>"


@dataclass
class Library:
    """One grammar library behind a common matcher interface."""

    name: str
    vocab: int
    eos: int
    compile_schema: Callable[[dict[str, Any], bool], Any]  # (schema, use_cache) -> compiled
    compile_json_object: Callable[[], Any]
    compile_lazy: Callable[[dict[str, Any]], Any]
    new_matcher: Callable[[Any], Any]
    fill: Callable[[list[Any], np.ndarray], None]  # writes bitmask rows for the batch
    advance: Callable[[Any, int], bool]
    notes: list[str] = field(default_factory=list)


def load_llguidance(
    tokenizer: Any, vocab: int, eos: int, parallel: bool = True
) -> tuple[Library, float]:
    import llguidance
    import llguidance.hf
    import llguidance.numpy as lnp

    start = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=eos)
    setup = time.perf_counter() - start
    executor = llguidance.LLExecutor()

    def compile_schema(schema: dict[str, Any], use_cache: bool) -> Any:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))
        return _ll_checked(llguidance.LLMatcher(lltok, grammar, log_level=0))

    def compile_lazy(schema: dict[str, Any]) -> Any:
        tag = llguidance.StructTag(trigger=TRIGGER, begin=TRIGGER, grammar=schema, end=END_TAG)
        lark = llguidance.StructTag.to_grammar([tag], assume_special=False)
        return _ll_checked(
            llguidance.LLMatcher(lltok, llguidance.grammar_from("lark", lark), log_level=0)
        )

    def fill(matchers: list[Any], bitmask: np.ndarray) -> None:
        if not parallel:
            for i, m in enumerate(matchers):
                lnp.fill_next_token_bitmask(m, bitmask, i)
        else:
            rows = [(m, i) for i, m in enumerate(matchers)]
            lnp.fill_next_token_bitmask_par(executor, rows, bitmask)

    lib = Library(
        name="llguidance " + version("llguidance"),
        vocab=vocab,
        eos=eos,
        compile_schema=compile_schema,
        compile_json_object=lambda: compile_schema({"type": "object"}, False),
        compile_lazy=compile_lazy,
        # A compiled grammar is a fresh matcher; requests clone it.
        new_matcher=lambda compiled: compiled.deep_copy(),
        fill=fill,
        advance=lambda m, t: bool(m.consume_token(t)),
        notes=["fill: " + ("LLExecutor thread pool" if parallel else "one matcher at a time")],
    )
    return lib, setup


def _ll_checked(matcher: Any) -> Any:
    if matcher.is_error():
        raise ValueError(matcher.get_error())
    return matcher


def load_xgrammar(
    tokenizer: Any, vocab: int, eos: int, parallel: bool = True
) -> tuple[Library, float]:
    import xgrammar as xgr

    start = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab, stop_token_ids=[eos])
    compiler = xgr.GrammarCompiler(info, cache_enabled=True)
    setup = time.perf_counter() - start

    def compile_schema(schema: dict[str, Any], use_cache: bool) -> Any:
        if not use_cache:
            compiler.clear_cache()
        return compiler.compile_json_schema(
            json.dumps(schema), any_whitespace=False, strict_mode=True
        )

    def compile_lazy(schema: dict[str, Any]) -> Any:
        tag = {
            "type": "structural_tag",
            "format": {
                "type": "triggered_tags",
                "triggers": [TRIGGER],
                "tags": [
                    {
                        "type": "tag",
                        "begin": TRIGGER,
                        "content": {"type": "json_schema", "json_schema": schema},
                        "end": END_TAG,
                    }
                ],
            },
        }
        return compiler.compile_structural_tag(json.dumps(tag))

    batcher = xgr.BatchGrammarMatcher()

    def fill(matchers: list[Any], bitmask: np.ndarray) -> None:
        if parallel and len(matchers) > 1:
            batcher.batch_fill_next_token_bitmask(matchers, bitmask)
            return
        for i, m in enumerate(matchers):
            m.fill_next_token_bitmask(bitmask, i)

    lib = Library(
        name="xgrammar " + version("xgrammar"),
        vocab=vocab,
        eos=eos,
        compile_schema=compile_schema,
        compile_json_object=compiler.compile_builtin_json_grammar,
        compile_lazy=compile_lazy,
        new_matcher=lambda compiled: xgr.GrammarMatcher(compiled),
        fill=fill,
        advance=lambda m, t: bool(m.accept_token(t)),
        notes=["fill: " + ("BatchGrammarMatcher threads" if parallel else "one matcher at a time")],
    )
    return lib, setup


def byte_level_vocabulary(tokenizer: Any) -> dict[bytes, list[int]]:
    """Token bytes of a byte-level BPE vocabulary (GPT-2 byte-to-unicode map)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = {b: chr(b) for b in printable}
    extra = (b for b in range(256) if b not in chars)
    chars.update({b: chr(256 + n) for n, b in enumerate(extra)})
    decode = {ch: b for b, ch in chars.items()}
    special = set(tokenizer.all_special_ids)
    out: dict[bytes, list[int]] = {}
    for text, token_id in tokenizer.get_vocab().items():
        if token_id in special:
            continue
        data = (
            bytes(decode[ch] for ch in text) if all(ch in decode for ch in text) else text.encode()
        )
        out.setdefault(data, []).append(token_id)
    return out


def load_outlines(
    tokenizer: Any, vocab: int, eos: int, parallel: bool = False
) -> tuple[Library, float]:
    import outlines_core as oc

    start = time.perf_counter()
    vocabulary = oc.Vocabulary(eos, byte_level_vocabulary(tokenizer))
    setup = time.perf_counter() - start
    indexes: dict[str, Any] = {}

    def compile_regex(regex: str, use_cache: bool) -> Any:
        # The library has no cache: callers keep the Index and build a Guide per request.
        if use_cache and regex in indexes:
            return indexes[regex]
        index = oc.Index(regex, vocabulary)
        indexes[regex] = index
        return index

    def compile_schema(schema: dict[str, Any], use_cache: bool) -> Any:
        return compile_regex(oc.json_schema.build_regex_from_schema(json.dumps(schema)), use_cache)

    def compile_lazy(schema: dict[str, Any]) -> Any:
        raise NotImplementedError("outlines-core has no lazy/triggered grammar mode")

    def fill(matchers: list[Any], bitmask: np.ndarray) -> None:
        words = bitmask.shape[1]
        for i, m in enumerate(matchers):
            row = bitmask[i]
            m.write_mask_into(row.ctypes.data, words, 4)

    def advance(guide: Any, token: int) -> bool:
        try:
            guide.advance(token, return_tokens=False)
        except ValueError:
            return False
        return True

    lib = Library(
        name="outlines-core " + version("outlines-core"),
        vocab=vocab,
        eos=eos,
        compile_schema=compile_schema,
        compile_json_object=lambda: compile_schema({"type": "object"}, False),
        compile_lazy=compile_lazy,
        new_matcher=lambda index: oc.Guide(index),
        fill=fill,
        advance=advance,
        notes=["vocabulary built from the tokenizer's byte-level BPE tokens (no hub download)"],
    )
    return lib, setup


LOADERS = {"llguidance": load_llguidance, "xgrammar": load_xgrammar, "outlines-core": load_outlines}


def median_time(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bit_allowed(bitmask: np.ndarray, row: int, token: int) -> bool:
    return bool((int(bitmask[row, token // 32]) >> (token % 32)) & 1)


def new_bitmask(batch: int, vocab: int) -> np.ndarray:
    return np.full((batch, (vocab + 31) // 32), -1, dtype=np.int32)


def accepts(lib: Library, compiled: Any, tokenizer: Any, text: str) -> bool:
    """Feed `text` token by token; true when every token is allowed and EOS then is."""
    matcher = lib.new_matcher(compiled)
    bitmask = new_bitmask(1, lib.vocab)
    for token in tokenizer.encode(text, add_special_tokens=False):
        lib.fill([matcher], bitmask)
        if not bit_allowed(bitmask, 0, token) or not lib.advance(matcher, token):
            return False
    lib.fill([matcher], bitmask)
    return bit_allowed(bitmask, 0, lib.eos)


def check_features(lib: Library, tokenizer: Any) -> dict[str, str]:
    results: dict[str, str] = {}
    for feature, (kind, grammar, good, bad) in FEATURES.items():
        try:
            if kind == "schema":
                compiled = lib.compile_schema(grammar, False)
            elif kind == "json_object":
                compiled = lib.compile_json_object()
            else:
                compiled = lib.compile_lazy(tool_call_schema())
        except Exception as exc:  # a library refusing a feature is a result, not a crash
            results[feature] = f"no (compile: {type(exc).__name__}: {str(exc)[:80]})"
            continue
        ok_good = accepts(lib, compiled, tokenizer, good)
        ok_bad = not bad or not accepts(lib, compiled, tokenizer, bad)
        if ok_good and ok_bad:
            results[feature] = "yes"
        else:
            results[feature] = (
                "no (" + ("valid text refused" if not ok_good else "invalid text accepted") + ")"
            )
    return results


def token_streams(tokenizer: Any, docs: list[Any]) -> list[list[int]]:
    return [
        tokenizer.encode(json.dumps(d, ensure_ascii=False), add_special_tokens=False) + [-1]
        for d in docs
    ]


def unpack(bitmask: np.ndarray, vocab: int) -> np.ndarray:
    """Bitmask (batch, words) int32, bit i of word w = token 32*w+i → uint8 0/1 (batch, vocab)."""
    return np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")[:, :vocab]


def apply_where(logits: Any, bitmask: np.ndarray, vocab: int) -> Any:
    import mlx.core as mx

    return mx.where(mx.array(unpack(bitmask, vocab).view(np.bool_)), logits, -mx.inf)


def apply_shifts(logits: Any, bitmask: np.ndarray, vocab: int) -> Any:
    import mlx.core as mx

    words = mx.array(bitmask.view(np.uint32))
    bits = (words[:, :, None] >> mx.arange(32, dtype=mx.uint32)) & 1
    allowed = bits.reshape(bitmask.shape[0], -1)[:, :vocab].astype(mx.bool_)
    return mx.where(allowed, logits, -mx.inf)


def apply_bias(logits: Any, bitmask: np.ndarray, vocab: int) -> Any:
    """Branchless: a 2-entry lookup (−inf, 0) gathered by bit, added to the logits."""
    import mlx.core as mx

    lut = mx.array([-np.inf, 0.0], dtype=mx.float32)
    return logits + mx.take(lut, mx.array(unpack(bitmask, vocab)))


APPLIERS = {
    "np.unpackbits + mx.where": apply_where,
    "mx shifts + mx.where": apply_shifts,
    "np.unpackbits + mx.take bias + add": apply_bias,
}


@dataclass
class StepTimes:
    """µs per request-step: median step, mean over the document, 99th percentile step."""

    fill_us: float
    fill_mean_us: float
    fill_p99_us: float
    advance_us: float
    steps: int
    masks: list[np.ndarray]  # full-batch bitmasks seen during decode, for timing the apply


def run_decode(lib: Library, compiled: Any, streams: list[list[int]]) -> StepTimes:
    """Advance len(streams) matchers in lockstep; per request-step medians in µs."""
    batch = len(streams)
    matchers = [lib.new_matcher(compiled) for _ in streams]
    bitmask = new_bitmask(batch, lib.vocab)
    fills, advances, masks = [], [], []
    for step in range(max(len(s) for s in streams)):
        live = [i for i, s in enumerate(streams) if step < len(s) and s[step] >= 0]
        if not live:
            break
        start = time.perf_counter()
        lib.fill([matchers[i] for i in live], bitmask[: len(live)])
        fills.append((time.perf_counter() - start) / len(live))
        for row, i in enumerate(live):
            if not bit_allowed(bitmask, row, streams[i][step]):
                raise AssertionError(f"{lib.name}: token of request {i} masked at step {step}")
        if len(live) == batch:
            masks.append(bitmask.copy())
        start = time.perf_counter()
        for i in live:
            if not lib.advance(matchers[i], streams[i][step]):
                raise AssertionError(f"{lib.name}: token refused by request {i} at step {step}")
        advances.append((time.perf_counter() - start) / len(live))
    return StepTimes(
        fill_us=statistics.median(fills) * 1e6,
        fill_mean_us=statistics.fmean(fills) * 1e6,
        fill_p99_us=float(np.percentile(fills, 99)) * 1e6,
        advance_us=statistics.median(advances) * 1e6,
        steps=len(fills),
        masks=masks,
    )


def time_apply(masks: list[np.ndarray], vocab: int, runs: int) -> dict[str, float]:
    """Median µs per decode step to apply each real bitmask to (batch, vocab) float32 logits."""
    import mlx.core as mx

    rng = np.random.default_rng(0)
    logits = mx.array(rng.standard_normal((masks[0].shape[0], vocab), dtype=np.float32))
    mx.eval(logits)
    sample = masks[:: max(1, len(masks) // 40)]
    out: dict[str, float] = {}
    for label, fn in APPLIERS.items():
        got = np.array(fn(logits, sample[-1], vocab))
        assert np.array_equal(np.isfinite(got), unpack(sample[-1], vocab).astype(bool)), label
        times = []
        for _ in range(runs):
            for mask in sample:
                start = time.perf_counter()
                mx.eval(fn(logits, mask, vocab))
                times.append(time.perf_counter() - start)
        out[label] = statistics.median(times) * 1e6
    return out


def random_masks(batch: int, vocab: int) -> list[np.ndarray]:
    """Worst case for branchy code: every bit a coin flip."""
    rng = np.random.default_rng(1)
    words = (vocab + 31) // 32
    return [
        rng.integers(-(2**31), 2**31 - 1, size=(batch, words), dtype=np.int32) for _ in range(8)
    ]


def report_compile(lib: Library, runs: int) -> None:
    for label, schema in (
        ("order JSON Schema", ORDER_SCHEMA),
        ("tool-call schema (4 functions)", tool_call_schema()),
    ):
        cold_s = median_time(partial(first_mask, lib, schema, False), runs)
        first_mask(lib, schema, True)
        warm_s = median_time(partial(first_mask, lib, schema, True), runs)
        print(
            f"compile+first mask  {label:32s} cold {cold_s * 1e3:9.2f} ms"
            f"   reused {warm_s * 1e3:8.3f} ms"
        )


def first_mask(lib: Library, schema: dict[str, Any], use_cache: bool) -> None:
    lib.fill([lib.new_matcher(lib.compile_schema(schema, use_cache))], new_bitmask(1, lib.vocab))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tokenizer_dir")
    parser.add_argument("--library", choices=sorted(LOADERS), required=True)
    parser.add_argument("--runs", type=int, default=5, help="repetitions; medians are printed")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=0, help="mask width; 0: the tokenizer's size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features-only", action="store_true", help="only the feature checks")
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="fill masks one matcher at a time, without the batch thread pool",
    )
    args = parser.parse_args()

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    vocab = args.vocab or len(tokenizer)
    eos = tokenizer.eos_token_id
    lib, setup = LOADERS[args.library](tokenizer, vocab, eos, not args.sequential)
    notes = "; ".join(lib.notes)
    print(f"{lib.name}: vocab {vocab}, eos {eos}, tokenizer setup {setup * 1e3:.1f} ms; {notes}")
    if not args.features_only:
        report_compile(lib, args.runs)
        masks = report_decode(lib, tokenizer, args.runs, args.batch, random.Random(args.seed))
        report_apply(masks, vocab, args.runs)
    for feature, result in check_features(lib, tokenizer).items():
        print(f"feature {feature:45s} {result}")


def report_decode(
    lib: Library, tokenizer: Any, runs: int, max_batch: int, rng: random.Random
) -> dict[int, list[np.ndarray]]:
    masks: dict[int, list[np.ndarray]] = {}
    for label, schema, make in (
        ("order", ORDER_SCHEMA, random_order),
        ("tool call", tool_call_schema(), random_call),
    ):
        compiled = lib.compile_schema(schema, True)
        for batch in (1, max_batch):
            results = []
            for _ in range(runs):
                streams = token_streams(tokenizer, [make(rng) for _ in range(batch)])
                results.append(run_decode(lib, compiled, streams))
            masks.setdefault(batch, [m for r in results for m in r.masks])
            fill = statistics.median(r.fill_us for r in results)
            mean = statistics.median(r.fill_mean_us for r in results)
            p99 = statistics.median(r.fill_p99_us for r in results)
            adv = statistics.median(r.advance_us for r in results)
            print(
                f"decode {label:9s} batch {batch:3d}: mask median {fill:6.1f} mean {mean:6.1f}"
                f" p99 {p99:7.1f} µs/request-step   advance median {adv:5.1f} µs/request-step"
                f"   ({results[0].steps} steps)"
            )
    return masks


def report_apply(masks: dict[int, list[np.ndarray]], vocab: int, runs: int) -> None:
    for batch, seen in masks.items():
        for kind, sample in (("decode masks", seen), ("random masks", random_masks(batch, vocab))):
            for label, us in time_apply(sample, vocab, runs).items():
                shape = f"({batch}, {vocab})"
                print(f"apply {kind} to mx float32 {shape} via {label:36s} {us:8.1f} µs/step")


if __name__ == "__main__":
    main()
