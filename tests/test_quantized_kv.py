"""Keys and values kept quantized in slots (`engine.kv_bits`): batched rows, arriving while
others decode, yield mlx-lm's single-stream tokens on its own quantized cache; the prefix
cache keeps and places quantized histories."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx.utils import tree_map_with_path
from mlx_lm.generate import generate_step
from mlx_lm.models import llama
from mlx_lm.models.cache import QuantizedKVCache, make_prompt_cache
from typer.testing import CliRunner

from mlxdeploy.cli import app
from mlxdeploy.engine.generator import SlotGenerator
from mlxdeploy.engine.prefix_cache import Prefixes
from mlxdeploy.engine.quantized_slots import KVQuantization, SlotQuantizedKVCache
from mlxdeploy.engine.rows import Token
from mlxdeploy.engine.sampling import greedy
from mlxdeploy.footprint import kv_bytes_per_token
from mlxdeploy.spec import SpecError, load_spec
from mlxdeploy.spec.settings import QUANTIZED_KV_CHUNK
from tests.batched import batched as _batched

VOCAB = 512
CHUNK = 16
CONFIG = {
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 3, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "vocab_size": VOCAB,
    "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "tie_word_embeddings": True,
    "rope_theta": 10000.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def model() -> Any:
    mx.random.seed(5)
    model = llama.Model(llama.ModelArgs.from_dict(CONFIG))
    # At their initial scale, random weights give each prompt one token over and over.
    louder = lambda path, w: w if "norm" in path or w.ndim < 2 else w * 3  # noqa: E731
    model.update(tree_map_with_path(louder, model.parameters()))
    mx.eval(model.parameters())
    return model


def _single(model: Any, prompt: list[int], n: int, kv: KVQuantization) -> list[int]:
    """mlx-lm's single stream: its own `QuantizedKVCache` from the first token (start 0), or
    its `KVCache` quantized once it holds `start` tokens."""
    args: dict[str, Any] = {"prefill_step_size": CHUNK}
    if kv.start == 0:
        args["prompt_cache"] = [
            QuantizedKVCache(group_size=kv.group_size, bits=kv.bits)
            for _ in make_prompt_cache(model)
        ]
    else:
        args.update(kv_bits=kv.bits, kv_group_size=kv.group_size, quantized_kv_start=kv.start)
    steps = generate_step(mx.array(prompt), model, max_tokens=n, sampler=greedy, **args)
    return [int(token) for (token, _), _ in zip(steps, range(n), strict=False)]


def _prompts(seed: int, n: int = 10) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, VOCAB) for _ in range(rng.randrange(20, 45))] for _ in range(n)]


@pytest.mark.parametrize(
    "kv",
    [KVQuantization(4, 32), KVQuantization(8, 32), KVQuantization(4, 32, start=CHUNK)],
    ids=["4-bit", "8-bit", "4-bit-from-16"],
)
def test_batched_greedy_tokens_match_mlx_lm_quantized_stream(
    model: Any, kv: KVQuantization
) -> None:
    """Rows read in pairs, then arriving in decode steps (mixed with them), batched on
    quantized slots: each row's tokens are mlx-lm's on its own quantized cache. With a start
    at a chunk's end, every row crosses it between calls, as a lone stream does."""
    prompts = _prompts(kv.bits + kv.start)
    lengths = [10 - (i % 3) * 3 for i in range(len(prompts))]
    expected = [_single(model, p, n, kv) for p, n in zip(prompts, lengths, strict=True)]
    assert len({t for tokens in expected for t in tokens}) > len(prompts), "tokens too uniform"
    generator = SlotGenerator(
        model, completion_batch_size=16, prefill_batch_size=2, prefill_step_size=CHUNK, kv=kv
    )
    assert all(isinstance(c, SlotQuantizedKVCache) for c in generator.slots.caches)
    assert _batched(generator, prompts, lengths) == expected
    cache = generator.slots.caches[0]
    assert isinstance(cache, SlotQuantizedKVCache) and cache.keys is not None
    assert cache.keys[0].dtype == mx.uint32  # packed: 32 // bits elements a word
    assert cache.keys[0].shape[-1] == CONFIG["head_dim"] * kv.bits // 32


@pytest.mark.parametrize("bits", [4, 8])
def test_attention_on_dequantized_reads_gives_the_same_tokens(model: Any, bits: int) -> None:
    """`on_read` (mlx's CUDA backend, which lacks quantized matmuls of prompt shapes): the
    slots hold the same quantized data and attention reads it dequantized through the fused
    kernel; the batched greedy tokens are the quantized path's."""
    prompts = _prompts(20 + bits)
    lengths = [10 - (i % 3) * 3 for i in range(len(prompts))]
    tokens = []
    for on_read in (False, True):
        kv = KVQuantization(bits, 32, on_read=on_read)
        generator = SlotGenerator(
            model, completion_batch_size=16, prefill_batch_size=2, prefill_step_size=CHUNK, kv=kv
        )
        tokens.append(_batched(generator, prompts, lengths))
        cache = generator.slots.caches[0]
        assert isinstance(cache, SlotQuantizedKVCache) and cache.keys is not None
        assert cache.keys[0].dtype == mx.uint32  # kept quantized either way
    assert tokens[0] == tokens[1]


def test_quantization_changes_tokens(model: Any) -> None:
    """The comparison above is not vacuous: 4-bit keys change some of the tokens."""
    prompts = _prompts(4)
    plain = [
        [
            int(t)
            for (t, _), _ in zip(
                generate_step(mx.array(p), model, sampler=greedy), range(10), strict=False
            )
        ]
        for p in prompts
    ]
    quantized = [_single(model, p, 10, KVQuantization(4, 32)) for p in prompts]
    assert plain != quantized


def test_a_slot_history_goes_through_the_prefix_cache_and_back(model: Any) -> None:
    """A finished row's quantized cache (mlx-lm's `QuantizedKVCache`) kept by the prefix
    cache, trimmed and written into a new slot: the follow-up prompt reads only its new
    tokens and yields mlx-lm's tokens for the whole prompt."""
    kv = KVQuantization(8, 32)
    prefixes = Prefixes(model, entries=8, budget=1 << 30)
    prompt = _prompts(11, 1)[0]
    generator = SlotGenerator(model, prefill_step_size=CHUNK, kv=kv)
    (uid,) = generator.insert([prompt], max_tokens=[6], samplers=[greedy])
    done = _drain(generator, uid)
    assert done.prompt_cache is not None and isinstance(done.prompt_cache[0], QuantizedKVCache)
    assert done.all_tokens is not None
    prefixes.store(done.all_tokens, done.prompt_cache)  # as the worker keeps an answer
    follow = done.all_tokens + [7, 8, 9]
    found, rest = prefixes.fetch(follow)
    assert found is not None and isinstance(found[0], QuantizedKVCache) and len(rest) <= 4
    history = follow[: len(follow) - len(rest)]
    (uid,) = generator.insert(
        [rest], max_tokens=[6], samplers=[greedy], caches=[found], all_tokens=[history]
    )
    tokens = _drain(generator, uid).all_tokens
    assert tokens is not None and tokens[len(follow) :] == _single(model, follow, 6, kv)


def _drain(generator: SlotGenerator, uid: int) -> Token:
    while True:
        for r in generator.next()[1]:
            assert r.uid == uid
            if r.finish_reason is not None:
                return r


@pytest.mark.usefixtures("clean_env")
def test_spec_problems_of_a_quantized_cache(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "model: owner/model\nengine:\n  kv_bits: 3\n  kv_group_size: 48\n  quantized_kv_start: -1\n"
    )
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:3:12: engine.kv_bits: must be one of 4 or 8, got 3",
        f"{path}:4:18: engine.kv_group_size: must be one of 32, 64 or 128, got 48",
        f"{path}:5:23: engine.quantized_kv_start: must be >= 0, got -1",
    ]
    path.write_text("model: owner/model\nengine:\n  quantized_kv_start: 1024\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:3:3: engine.quantized_kv_start: quantized_kv_start applies to a quantized "
        "cache: set kv_bits (4 or 8) too"
    ]
    path.write_text("model: owner/model\nengine:\n  kv_bits: 4\n  prefill_step_size: 2048\n")
    engine = load_spec(path).spec.engine
    assert engine.kv_bits == 4 and engine.prompt_chunk == QUANTIZED_KV_CHUNK < 2048


def test_cache_bytes_per_token_of_a_config() -> None:
    """4-bit keys and values take 4 bits an element and a scale and bias per group: 0.28x of
    16 bits at groups of 64; 8-bit 0.53x."""
    config = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "hidden_size": 4096}  # fmt: skip
    full = kv_bytes_per_token(config, None, on_cpu=False)
    assert full == 2 * 32 * 8 * 128 * 2  # 128 KiB a token: 4 GiB for 32k tokens
    assert kv_bytes_per_token(config, 4, 64, on_cpu=False) / full == 0.28125
    assert kv_bytes_per_token(config, 8, 64, on_cpu=False) / full == 0.53125


@pytest.mark.usefixtures("clean_env")
def test_validate_counts_the_smaller_cache(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(f"model: {tiny_model_dir}\nname: tiny\nengine:\n  kv_bits: 4\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "1 spec valid"
    assert lines[1].startswith("tiny: keys and values about ")
    assert "per 1,000 tokens of context (4-bit; " in lines[1]


def test_a_group_size_that_does_not_divide_the_head_says_so(model: Any) -> None:
    """At load (the loop's choice), and at the first write for a generator built directly."""
    from mlxdeploy.engine.loops import Loop
    from mlxdeploy.spec.settings import EngineSettings

    with pytest.raises(ValueError, match="kv_group_size 64 does not divide the model's head"):
        Loop.of(model, EngineSettings(kv_bits=4, kv_group_size=64), distributed=False)
    assert Loop.of(model, EngineSettings(kv_bits=4, kv_group_size=32), distributed=False)
    generator = SlotGenerator(model, prefill_step_size=CHUNK, kv=KVQuantization(4, 64))
    generator.insert(_prompts(1, 1), max_tokens=[2], samplers=[greedy])
    with pytest.raises(ValueError, match="kv_group_size 64 does not divide the model's head"):
        generator.next()


def test_a_draft_model_beside_quantized_keys_is_accepted(tmp_path: Path) -> None:
    """A draft's rejected guesses roll back on quantized slots too (test_quantized_draft.py)."""
    spec = tmp_path / "both.yaml"
    spec.write_text("model: a\ndraft_model: a\nengine:\n  kv_bits: 4\n  quantized_kv_start: 64\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text("{}")
    loaded = load_spec(spec, require_weights=False).spec
    assert loaded.draft_model == "a" and loaded.engine.kv_bits == 4


def test_quantized_keys_on_a_model_with_attention_sinks_are_refused_at_load() -> None:
    """mlx-lm's attention on quantized keys takes no sinks (gpt-oss): the model does not load,
    with the reason, instead of failing every request."""
    from mlxdeploy.engine.loops import Loop
    from mlxdeploy.spec.settings import EngineSettings
    from tests.test_families import _model

    settings = EngineSettings(kv_bits=4)
    with pytest.raises(ValueError, match="gpt_oss attends with sinks.*leave out engine.kv_bits"):
        Loop.of(_model("gpt_oss"), settings, distributed=False)
    # No sinks: only the next check speaks (the test models' heads of 16 take no group).
    with pytest.raises(ValueError, match="kv_group_size 64 does not divide the model's head"):
        Loop.of(_model("llama"), settings, distributed=False)


def test_a_model_that_cannot_run_as_the_spec_asks_fails_its_load_with_the_reason(
    demo_dir: Path, tmp_path: Path
) -> None:
    import asyncio

    from mlxdeploy.engine.engine import MLXEngine
    from tests.conftest import make_tiny_model, write_spec
    from tests.test_families import BASE, FAMILIES

    config = {**BASE, **FAMILIES["gpt_oss"], "model_type": "gpt_oss", "vocab_size": 49152}
    (tmp_path / "gpt-oss").mkdir()
    model_dir = make_tiny_model(tmp_path / "gpt-oss", demo_dir, seed=0, config=config)
    spec = write_spec(tmp_path / "spec.yaml", model_dir, engine={"kv_bits": 4, "warmup": False})
    deployment = load_spec(spec)
    engine = MLXEngine(deployment.catalog.models[0])
    loop = asyncio.new_event_loop()
    try:
        engine.start(loop)
        assert engine.wait_loaded(120) == "failed"
        assert engine.error is not None
        assert engine.error.startswith(f"model '{engine.model_id}' cannot be served: gpt_oss ")
    finally:
        engine.stop()
        loop.close()


PER_MODEL = """\
models:
  - {id: full, model: MODEL}
  - id: small
    model: MODEL
    engine: {kv_bits: 4, kv_group_size: 32}
engine: {warmup: false}
"""


def _greedy_text(model: Any, prompt: str, n: int = 32) -> str:
    """A greedy answer of an engine built as `up` builds one for this served model."""
    import asyncio

    from mlxdeploy.engine.api import Failed, SamplingParams, Text, Turn
    from mlxdeploy.engine.engine import MLXEngine

    params = SamplingParams(
        max_tokens=n, temperature=0.0, top_p=1.0, repetition_penalty=1.0,
        repetition_context_size=20, stop=(),
    )  # fmt: skip

    async def answer() -> str:
        engine = MLXEngine(model)
        engine.start(asyncio.get_running_loop())
        try:
            assert await asyncio.to_thread(engine.wait_loaded, 300) == "ready", engine.error
            turns = engine.prepare([Turn("user", prompt)], None)
            events = [e async for e in engine.generate(turns, params)]
        finally:
            await asyncio.to_thread(engine.stop)
        assert not [e for e in events if isinstance(e, Failed)], events
        return "".join(e.text for e in events if isinstance(e, Text))

    return asyncio.run(answer())


@pytest.fixture(scope="module")
def wide_model_dir(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_wide_model

    return make_wide_model(tmp_path_factory.mktemp("wide-heads"), demo_dir)


@pytest.mark.usefixtures("clean_env")
def test_each_model_keeps_its_cache_as_its_entry_says(wide_model_dir: Path, tmp_path: Path) -> None:
    """A model's own `engine` keys: one model of the spec quantizes its keys and values and
    answers as a spec quantizing every model's would; its neighbour keeps full precision and
    answers as a spec without kv_bits."""
    path = tmp_path / "two.yaml"
    path.write_text(PER_MODEL.replace("MODEL", str(wide_model_dir)))
    full, small = load_spec(path).catalog.models
    assert (full.engine.kv_bits, small.engine.kv_bits, small.engine.kv_group_size) == (None, 4, 32)
    alone = tmp_path / "alone.yaml"
    alone.write_text(
        f"model: {wide_model_dir}\nengine: {{warmup: false, kv_bits: 4, kv_group_size: 32}}\n"
    )
    (quantized,) = load_spec(alone).catalog.models
    prompt = "Write a long story about the sea, the wind and a small boat."
    answers = {name: _greedy_text(m, prompt) for name, m in
               [("full", full), ("small", small), ("quantized", quantized)]}  # fmt: skip
    assert answers["small"] == answers["quantized"]
    assert answers["full"] != answers["small"], "4-bit keys changed nothing: the test is vacuous"


@pytest.mark.usefixtures("clean_env")
def test_engine_keys_of_a_model_entry(tmp_path: Path) -> None:
    """An entry's keys replace the top level's; kv shape keys need kv_bits where they apply."""
    path = tmp_path / "spec.yaml"
    path.write_text(
        "engine: {kv_bits: 8, max_batch_size: 4}\nmodels:\n"
        "  - {id: a, model: owner/a}\n"
        "  - {id: b, model: owner/b, engine: {kv_bits: null, max_batch_size: 2}}\n"
        "  - {id: c, model: owner/c, engine: {quantized_kv_start: 512}}\n"
    )
    a, b, c = load_spec(path, require_weights=False).catalog.models
    assert (a.engine.kv_bits, a.engine.max_batch_size, a.engine.quantized_kv_start) == (8, 4, 0)
    assert (b.engine.kv_bits, b.engine.max_batch_size, b.engine.admits) == (None, 2, 2 + 1024)
    assert (c.engine.kv_bits, c.engine.quantized_kv_start) == (8, 512)
    path.write_text(
        "engine: {kv_group_size: 32}\nmodels:\n"
        "  - {id: a, model: owner/a, engine: {kv_bits: 4}}\n"
        "  - {id: b, model: owner/b}\n"
    )
    a, b = load_spec(path, require_weights=False).catalog.models
    assert (a.engine.kv_bits, a.engine.kv_group_size, b.engine.kv_bits) == (4, 32, None)
    path.write_text(
        "models:\n  - id: a\n    model: owner/a\n    engine:\n      kv_group_size: 32\n"
    )
    with pytest.raises(SpecError) as caught:
        load_spec(path, require_weights=False)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:5:7: models[0].engine.kv_group_size: kv_group_size applies to a quantized "
        "cache: set kv_bits (4 or 8) too"
    ]
