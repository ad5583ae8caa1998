"""Adapters in the spec: each served as a model id of its own, and checked against its base model
by `validate` from the adapter's config and both files' safetensors headers (no weights are
read), every problem at its line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mlxdeploy.cli import app
from mlxdeploy.spec import SpecError, load_spec
from tests.test_footprint import write_header_only

pytestmark = pytest.mark.usefixtures("clean_env")

HIDDEN, INTERMEDIATE, LAYERS = 64, 128, 4
LINEARS = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (32, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTERMEDIATE),
}  # (out, in)


def write_base(root: Path, quantized: bool = False) -> Path:
    """A model directory with a config and a header-only weights file."""
    base = root / "models" / "base"
    base.mkdir(parents=True)
    config: dict[str, Any] = {"model_type": "llama", "num_hidden_layers": LAYERS}
    tensors: dict[str, tuple[str, list[int]]] = {"model.embed_tokens.weight": ("F32", [100, 64])}
    for i in range(LAYERS):
        for key, (out_dims, in_dims) in LINEARS.items():
            name = f"model.layers.{i}.{key}"
            if quantized:  # 4 bits: 8 values per uint32
                tensors[f"{name}.weight"] = ("U32", [out_dims, in_dims // 8])
                tensors[f"{name}.scales"] = ("F16", [out_dims, in_dims // 32])
            else:
                tensors[f"{name}.weight"] = ("F32", [out_dims, in_dims])
    if quantized:
        config["quantization"] = {"group_size": 32, "bits": 4}
    (base / "config.json").write_text(json.dumps(config))
    write_header_only(base / "model.safetensors", tensors)
    return base


def write_adapter(
    root: Path,
    name: str,
    *,
    rank: int = 4,
    keys: list[str] | None = None,
    num_layers: int = 2,
    kind: str = "lora",
    shapes: dict[str, tuple[int, int]] | None = None,
    layers: range | None = None,
    extra: dict[str, tuple[str, list[int]]] | None = None,
) -> Path:
    """An adapter directory (config and header-only tensors) for `write_base`'s model."""
    path = root / "adapters" / name
    path.mkdir(parents=True)
    keys = ["self_attn.q_proj", "self_attn.v_proj"] if keys is None else keys
    tensors: dict[str, tuple[str, list[int]]] = {}
    for i in layers if layers is not None else range(LAYERS - num_layers, LAYERS):
        for key in keys:
            out_dims, in_dims = (shapes or {}).get(key, LINEARS.get(key, (HIDDEN, HIDDEN)))
            tensors[f"model.layers.{i}.{key}.lora_a"] = ("F32", [in_dims, rank])
            tensors[f"model.layers.{i}.{key}.lora_b"] = ("F32", [rank, out_dims])
            if kind == "dora":
                tensors[f"model.layers.{i}.{key}.m"] = ("F32", [out_dims])
    tensors.update(extra or {})
    write_header_only(path / "adapters.safetensors", tensors)
    config = {
        "fine_tune_type": kind,
        "num_layers": num_layers,
        "lora_parameters": {"rank": rank, "scale": 20.0, "dropout": 0.0, "keys": keys},
    }
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def write(root: Path, text: str) -> Path:
    path = root / "spec.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return [str(problem) for problem in caught.value.problems]


SPEC = """
    defaults:
      temperature: 0.5
    models:
      - id: base
        model: models/base
        adapters:
          - id: support
            path: adapters/support
            description: Answers support tickets
            defaults:
              temperature: 0.0
            stop: ["###"]
          - id: sql
            path: adapters/sql
    endpoints:
      ticket:
        model: support
        system_prompt: You answer support tickets.
"""


def test_adapters_are_ids_of_their_own_with_their_models_settings_under_theirs(
    tmp_path: Path,
) -> None:
    write_base(tmp_path)
    write_adapter(tmp_path, "support")
    write_adapter(tmp_path, "sql", kind="dora", rank=8, keys=["mlp.down_proj"], num_layers=-1)
    catalog = load_spec(write(tmp_path, SPEC)).catalog
    assert catalog.ids == ["base", "support", "sql", "ticket"]
    (model,) = catalog.models
    support, sql = model.adapters
    assert (support.model_id, support.path) == ("base", tmp_path / "adapters" / "support")
    assert (support.defaults.temperature, support.stop) == (0.0, ("###",))
    assert (sql.defaults.temperature, sql.stop) == (0.5, model.stop)
    assert not support.fuse and support.written == "adapters/support"
    (ticket,) = catalog.presets
    assert (ticket.model_id, ticket.defaults.temperature, ticket.stop) == ("support", 0.0, ("###",))


def test_a_quantized_base_is_measured_by_its_unpacked_input(tmp_path: Path) -> None:
    write_base(tmp_path, quantized=True)
    write_adapter(tmp_path, "support")
    write_adapter(tmp_path, "sql", keys=["mlp.down_proj"])
    assert load_spec(write(tmp_path, SPEC)).catalog.ids[:3] == ["base", "support", "sql"]


def adapter_problem(tmp_path: Path, **kwargs: Any) -> str:
    write_base(tmp_path)
    write_adapter(tmp_path, "support", **kwargs)
    write_adapter(tmp_path, "sql")
    path = write(tmp_path, SPEC)
    problems = problems_of(path)
    assert problems[0].startswith(f"{path}:8:15: models[0].adapters[0].path: "), problems
    return "\n".join(problems)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"shapes": {"self_attn.v_proj": (48, 64)}},
         "model.layers.2.self_attn.v_proj: the adapter maps 64 -> 48 features, "
         "the base layer 64 -> 32"),
        ({"num_layers": 6}, "num_layers is 6, the base model has 4 layers"),
        ({"keys": ["self_attn.qkv_proj"]},
         "keys names 'self_attn.qkv_proj', which is no linear layer of the base model"),
        ({"layers": range(1, 4)},
         "model.layers.1.self_attn.q_proj: layer 1 is not among the last 2 layers"),
        ({"extra": {"model.layers.3.mlp.down_proj.lora_a": ("F32", [128, 4]),
                    "model.layers.3.mlp.down_proj.lora_b": ("F32", [4, 64])}},
         "model.layers.3.mlp.down_proj: 'mlp.down_proj' is not among lora_parameters.keys"),
        ({"extra": {"model.layers.3.self_attn.q_proj.lora_a": ("F32", [64, 8])}},
         "do not have rank 4 (lora_parameters.rank)"),
        ({"extra": {"lm_head.lora_a": ("F32", [64, 4]), "lm_head.lora_b": ("F32", [4, 100])}},
         "lm_head: only linear layers inside the decoder layers can carry an adapter"),
        ({"kind": "full"}, "fine_tune_type is 'full'; adapters are lora or dora"),
    ],
)  # fmt: skip
def test_validate_checks_each_adapter_against_its_base(
    tmp_path: Path, kwargs: dict[str, Any], expected: str
) -> None:
    assert expected in adapter_problem(tmp_path, **kwargs)


def test_a_missing_adapter_is_a_problem_unless_weights_are_not_required(tmp_path: Path) -> None:
    write_base(tmp_path)
    write_adapter(tmp_path, "sql")
    path = write(tmp_path, SPEC)
    (problem,) = problems_of(path)
    assert problem == (
        f"{path}:8:15: models[0].adapters[0].path: no adapter directory at "
        f"{tmp_path / 'adapters' / 'support'}"
    )
    assert load_spec(path, require_weights=False).catalog.ids == [
        "base",
        "support",
        "sql",
        "ticket",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("""
            models:
              - id: base
                model: models/base
                adapters:
                  - {id: base, path: adapters/a}
         """, "5:14: models[0].adapters[0].id: the id 'base' is used twice"),
        ("""
            adapters:
              - {id: a, path: adapters/a}
            models:
              - {id: base, model: models/base}
         """, "1:1: adapters: with 'models', each entry lists its own adapters"),
        ("""
            model: models/base
            adapters:
              - {id: a, path: adapters/a, fuse: true}
              - {id: b, path: adapters/b}
         """, "3:37: adapters[0].fuse: a fused adapter changes the model's weights"),
        ("""
            model: models/base
            adapters:
              - {id: a, path: adapters/a}
            endpoints:
              a: {}
         """, "5:3: endpoints.a: 'a' is already a model id"),
        ("""
            model: models/base
            distributed: {ranks: 2}
            adapters:
              - {id: a, path: adapters/a}
         """, "2:1: distributed: adapters are not served on a model split over ranks"),
    ],
)  # fmt: skip
def test_adapter_declarations_are_checked_across_keys(
    tmp_path: Path, text: str, expected: str
) -> None:
    write_base(tmp_path)
    write_adapter(tmp_path, "a")
    write_adapter(tmp_path, "b")
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert any(p.startswith(f"{path}:{expected}") for p in problems), problems


def test_validate_prints_the_problem_at_its_line(tmp_path: Path) -> None:
    write_base(tmp_path)
    write_adapter(tmp_path, "support", rank=8, shapes={"self_attn.q_proj": (64, 32)})
    write_adapter(tmp_path, "sql")
    path = write(tmp_path, SPEC)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code != 0
    assert (
        f"{path}:8:15: models[0].adapters[0].path: model.layers.2.self_attn.q_proj: the adapter "
        "maps 32 -> 64 features, the base layer 64 -> 64"
    ) in result.output
