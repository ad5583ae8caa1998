"""Team layouts: `extends` (deep merge, lists replace) and `${VAR}` / `${VAR:-default}`, with
errors placed in the file and on the line where the value was written."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxdeploy.spec import SpecError, load_spec

BASE = """\
model: owner/base-model
port: 8000
defaults:
  temperature: 0.2
  max_tokens: 256
stop: ["</s>", "<|end|>"]
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_service_extends_the_team_base(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", BASE)
    service = write(
        tmp_path / "services" / "chat.yaml",
        "extends: ../base.yaml\nname: chat\ndefaults:\n  temperature: 0.7\nstop: [STOP]\n",
    )
    spec = load_spec(service).spec
    assert spec.model == "owner/base-model" and spec.name == "chat" and spec.port == 8000
    assert spec.defaults.temperature == 0.7 and spec.defaults.max_tokens == 256  # deep merge
    assert spec.stop == ["STOP"]  # lists replace


def test_bases_chain_and_a_cycle_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "extends: b.yaml\nmodel: owner/m\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\nport: 9\n")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "a.yaml")
    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path / 'b.yaml'}:1:10: extends: 'a.yaml' extends itself (cycle)"
    ]


def test_a_missing_base_points_at_extends(tmp_path: Path) -> None:
    spec = write(tmp_path / "s.yaml", "model: owner/m\nextends: nowhere.yaml\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert str(info.value.problems[0]).startswith(f"{spec}:2:10: extends: base spec ")


def test_an_error_in_the_base_names_the_base_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", BASE.replace("temperature: 0.2", "temperature: -1"))
    service = write(tmp_path / "svc.yaml", "extends: base.yaml\nname: svc\n")
    with pytest.raises(SpecError) as info:
        load_spec(service)
    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path / 'base.yaml'}:4:16: defaults.temperature: must be >= 0, got -1"
    ]


def test_interpolation_with_defaults_and_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEAM_MODEL", "owner/from-env")
    monkeypatch.delenv("SVC_PORT", raising=False)
    spec = write(
        tmp_path / "s.yaml",
        "model: ${TEAM_MODEL}\nport: ${SVC_PORT:-8123}\nname: svc-${TEAM_MODEL}\n",
    )
    loaded = load_spec(spec).spec
    assert loaded.model == "owner/from-env"
    assert loaded.port == 8123  # a whole-value reference takes the YAML type of its text
    assert loaded.name == "svc-owner/from-env"


def test_an_unset_variable_without_default_is_reported_where_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    spec = write(tmp_path / "s.yaml", "model: owner/m\nname: ${NOT_SET_ANYWHERE}\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert str(info.value.problems[0]) == (
        f"{spec}:2:7: name: environment variable NOT_SET_ANYWHERE is not set "
        "(use ${NOT_SET_ANYWHERE:-default})"
    )


def test_a_relative_model_path_resolves_from_the_file_that_sets_it(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "team" / "models" / "tiny")
    write(tmp_path / "team" / "base.yaml", "model: ./models/tiny\n")
    service = write(tmp_path / "team" / "svc" / "a.yaml", "extends: ../base.yaml\n")
    assert (
        load_spec(service).catalog.models[0].source.path
        == (tmp_path / "team" / "models" / "tiny").resolve()
    )
