"""engine/adapters.py: rows of different adapters (and of the base model) in one batch, each
yielding the greedy tokens of mlx-lm's single-stream generation with that adapter alone,
loaded mlx-lm's public way (`load(path, adapter_path=...)`); a fused adapter as `mlx_lm.fuse`
fuses it."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.tuner.utils import load_adapters
from mlx_lm.utils import load

from mlxdeploy.engine.adapters import AdapterError, Selection, attach, fuse
from mlxdeploy.engine.generator import SlotGenerator
from mlxdeploy.engine.mixed import MixedForward
from mlxdeploy.engine.prefix_cache import Prefixes
from mlxdeploy.engine.sampling import greedy
from tests.adapters import ATTENTION, MIXED_KEYS, louder_copy, make_adapter

TOKENS = 8


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return louder_copy(tiny_model_dir, tmp_path_factory.mktemp("louder-llama"))


@pytest.fixture(scope="module")
def adapter_dirs(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A LoRA of rank 4 on every layer's attention, and a DoRA of rank 8 on attention and
    MLP layers of the last layer only."""
    base = load(str(model_dir))[0]
    root = tmp_path_factory.mktemp("adapters")
    lora = make_adapter(root / "lora", base, keys=ATTENTION, rank=4, seed=1)
    dora = make_adapter(
        root / "dora", base, keys=MIXED_KEYS, rank=8, scale=5.0, num_layers=1, kind="dora", seed=2
    )
    return [lora, dora]


def prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, 40000) for _ in range(rng.randrange(12, 40))] for _ in range(n)]


def single(model: Any, prompt: list[int], n: int = TOKENS) -> list[int]:
    steps = generate_step(mx.array(prompt), model, max_tokens=n, sampler=greedy)
    return [int(token) for (token, _), _ in zip(steps, range(n), strict=False)]


def alone(model_dir: Path, adapter: Path | None, quantize: bool = False) -> Any:
    """mlx-lm's model with one adapter (or none), loaded the public way."""
    if not quantize:
        path = None if adapter is None else str(adapter)
        return load(str(model_dir), adapter_path=path)[0]
    model = load(str(model_dir))[0]
    nn.quantize(model, group_size=32, bits=4)
    return model if adapter is None else load_adapters(model, str(adapter))


def batched(
    generator: SlotGenerator, rows: list[tuple[list[int], int]], arrive: dict[int, int]
) -> list[list[int]]:
    """Each (prompt, adapter) row's greedy tokens; row i is inserted at step `arrive[i]`."""
    uids: dict[int, int] = {}
    out: dict[int, list[int]] = {}
    step = 0
    while len(uids) < len(rows) or any(len(out[u]) < TOKENS for u in uids.values()):
        for i, (prompt, adapter) in enumerate(rows):
            if arrive[i] == step:
                (uids[i],) = generator.insert_segments(
                    [[prompt]], max_tokens=[TOKENS], samplers=[greedy], adapters=[adapter]
                )
                out[uids[i]] = []
        for token in generator.next()[1]:
            out[token.uid].append(token.token)
        step += 1
    return [out[uids[i]] for i in range(len(rows))]


class Present:
    """The sets of adapters the forward passes of a test applied together."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.seen: list[frozenset[int]] = []
        original = Selection._set

        def recorded(selection: Selection, adapters: Any, shape: Any) -> None:
            original(selection, adapters, shape)
            self.seen.append(selection.present)

        monkeypatch.setattr(Selection, "_set", recorded)


@pytest.mark.parametrize("mix", [True, False], ids=["chunks-in-decode-steps", "chunks-apart"])
def test_two_adapters_and_the_base_share_batches_and_each_matches_mlx_lm_alone(
    model_dir: Path, adapter_dirs: list[Path], mix: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    present = Present(monkeypatch)
    mixed: list[int] = []
    forward = MixedForward.__call__

    def counted(self: MixedForward, *args: Any) -> Any:
        mixed.append(1)
        return forward(self, *args)

    monkeypatch.setattr(MixedForward, "__call__", counted)
    asked = prompts(4, seed=0)
    choices = [None, *adapter_dirs]
    expected = {(p, a): single(alone(model_dir, choices[a]), asked[p]) for p in range(4)
                for a in range(3)}  # fmt: skip
    # Every adapter changes every prompt's answer: a row that applied another's (or none)
    # could not match.
    for p in range(4):
        assert len({tuple(expected[p, a]) for a in range(3)}) == 3
    model = load(str(model_dir))[0]
    attach(model, [("lora", adapter_dirs[0]), ("dora", adapter_dirs[1])])
    generator = SlotGenerator(model, prefill_step_size=16, prefill_batch_size=2, mix=mix)
    rows = [(asked[p], a) for p in range(4) for a in (1, 0, 2)]
    # Half at once, the rest while those decode (their prompts read in chunks of 16).
    arrive = {i: 0 if i < 6 else 2 + i % 3 for i in range(len(rows))}
    got = batched(generator, rows, arrive)
    assert got == [expected[p, a] for p in range(4) for a in (1, 0, 2)]
    assert frozenset({0, 1, 2}) in present.seen  # one forward pass held all three
    assert bool(mixed) == mix


def test_a_quantized_base_carries_adapters(model_dir: Path, adapter_dirs: list[Path]) -> None:
    asked = prompts(2, seed=1)
    choices = [None, *adapter_dirs]
    expected = [single(alone(model_dir, choices[a], quantize=True), asked[a % 2])
                for a in range(3)]  # fmt: skip
    model = alone(model_dir, None, quantize=True)
    attach(model, [("lora", adapter_dirs[0]), ("dora", adapter_dirs[1])])
    assert isinstance(model.model.layers[0].self_attn.q_proj.base, nn.QuantizedLinear)
    generator = SlotGenerator(model, prefill_step_size=16)
    rows = [(asked[a % 2], a) for a in range(3)]
    assert batched(generator, rows, {0: 0, 1: 0, 2: 1}) == expected


def test_the_choices_of_one_request_follow_its_adapter(
    model_dir: Path, adapter_dirs: list[Path]
) -> None:
    """n > 1: the prompt is read once; every choice decodes on its own copy, with the adapter."""
    (prompt,) = prompts(1, seed=2)
    expected = single(alone(model_dir, adapter_dirs[1]), prompt)
    model = load(str(model_dir))[0]
    attach(model, [("lora", adapter_dirs[0]), ("dora", adapter_dirs[1])])
    generator = SlotGenerator(model, prefill_step_size=16)
    uids = generator.insert_segments(
        [[prompt]] * 3, max_tokens=[TOKENS] * 3, samplers=[greedy] * 3, adapters=[2] * 3,
        shared=True,
    )  # fmt: skip
    out: dict[int, list[int]] = {uid: [] for uid in uids}
    while any(len(tokens) < TOKENS for tokens in out.values()):
        for token in generator.next()[1]:
            out[token.uid].append(token.token)
    assert list(out.values()) == [expected] * 3


def test_a_fused_adapter_is_mlx_lm_fuses_model(
    model_dir: Path,
    adapter_dirs: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlx_lm import fuse as mlx_lm_fuse

    for adapter in adapter_dirs:
        saved = tmp_path / adapter.name
        argv = ["mlx_lm.fuse", "--model", str(model_dir), "--adapter-path", str(adapter)]
        monkeypatch.setattr(sys, "argv", [*argv, "--save-path", str(saved)])
        mlx_lm_fuse.main()
        theirs = load(str(saved))[0]
        ours = load(str(model_dir))[0]
        fuse(ours, adapter)
        assert not any("lora" in name for name, _ in tree_flatten(ours.parameters()))
        mine, other = dict(tree_flatten(ours.parameters())), dict(tree_flatten(theirs.parameters()))
        assert mine.keys() == other.keys()
        assert all(mx.array_equal(mine[k], other[k]).item() for k in mine)
        (prompt,) = prompts(1, seed=3)
        assert (
            single(ours, prompt) == single(theirs, prompt) != single(alone(model_dir, None), prompt)
        )


def test_an_adapter_for_another_shape_is_refused_naming_the_layer(
    model_dir: Path, tmp_path: Path
) -> None:
    from mlx_lm.models import llama

    other = llama.Model(llama.ModelArgs.from_dict({
        "model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2,
        "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "vocab_size": 100,
    }))  # fmt: skip
    adapter = make_adapter(tmp_path / "small", other)
    model = load(str(model_dir))[0]
    with pytest.raises(AdapterError, match=r"model\.layers\.0\.self_attn\.q_proj.*64"):
        attach(model, [("small", adapter)])


def test_prefix_caches_of_different_adapters_are_apart(model_dir: Path) -> None:
    """An adapter changes the keys and values of every token: a prompt cached for one must
    never serve another, nor the base model."""
    model = load(str(model_dir))[0]
    prefixes = Prefixes(model, entries=8, budget=1 << 30)
    prompt = list(range(100, 130))
    cache = make_prompt_cache(model)
    model(mx.array(prompt)[None], cache=cache)
    prefixes.store(prompt, cache, "lora")
    assert prefixes.fetch(prompt + [7, 8], "lora")[0] is not None
    assert prefixes.fetch(prompt + [7, 8])[0] is None
    assert prefixes.fetch(prompt + [7, 8], "dora")[0] is None
