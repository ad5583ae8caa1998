"""The command line: one actionable line per problem, exit codes, help on every command."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlxdeploy.bench.servers import mlxdeploy_command, running
from mlxdeploy.cli import app
from tests.conftest import write_spec
from tests.servers import start_server

DEMO = Path(__file__).parent.parent / "configs" / "demo.yaml"
CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
BROKEN = """\
model: ./missing.gguf
port: 80800
defaults:
  temprature: 0.5
  max_tokens: zero
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run_up(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        mlxdeploy_command("up", *args),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_shipped_configs_are_valid(runner: CliRunner) -> None:
    assert len(CONFIGS) >= 3
    result = runner.invoke(app, ["validate", *map(str, CONFIGS)])
    assert result.exit_code == 0, result.output
    assert f"{len(CONFIGS)} specs valid" in result.output


def test_validate_reports_every_problem_with_its_line(runner: CliRunner, tmp_path: Path) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text(BROKEN)
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 4, result.output
    assert lines[0].startswith(f"{spec}:1:8: model: ")
    assert lines[1].startswith(f"{spec}:2:7: port: ")
    assert lines[2].startswith(f"{spec}:4:3: defaults.temprature: unknown key 'temprature'")
    assert "did you mean 'temperature'" in lines[2]
    assert lines[3].startswith(f"{spec}:5:15: defaults.max_tokens: ")
    assert "Traceback" not in result.output


def test_validate_checks_all_files_and_fails_if_any_is_bad(
    runner: CliRunner, tmp_path: Path
) -> None:
    good = write_spec(tmp_path / "good.yaml", "owner/model")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: owner/model\nport: [1\n")
    result = runner.invoke(app, ["validate", str(good), str(bad)])
    assert result.exit_code == 1
    assert result.output.startswith(f"{bad}:")
    assert str(good) not in result.output


def test_validate_github_and_json_formats(runner: CliRunner, tmp_path: Path) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text(BROKEN)
    github = runner.invoke(app, ["validate", "--format", "github", str(spec)])
    assert github.exit_code == 1
    assert github.output.splitlines()[1].startswith(f"::error file={spec},line=2,col=7,")
    problems = json.loads(runner.invoke(app, ["validate", "--format", "json", str(spec)]).output)
    assert [p["field"] for p in problems][1:] == [
        "port",
        "defaults.temprature",
        "defaults.max_tokens",
    ]


def test_schema_is_json_schema(runner: CliRunner) -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["properties"]["port"]["maximum"] == 65535


@pytest.mark.parametrize("command", [[], ["up"], ["validate"], ["schema"], ["render"], ["bench"]])
def test_help_on_every_command(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


@pytest.mark.process
def test_up_refuses_an_invalid_spec_without_starting(tmp_path: Path) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text(BROKEN)
    result = run_up(str(spec))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[1].startswith(f"{spec}:2:7: port: ")
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.process
def test_up_names_a_repo_it_cannot_download(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "hf.yaml", "no-such-owner/no-such-model")
    result = run_up(str(spec), "--port", "0", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "no-such-owner/no-such-model" in last
    assert "hf download" in last


@pytest.mark.process
def test_up_reports_a_busy_port(tiny_spec: Path) -> None:
    """The port is bound before any model loads: one line naming `port`, nothing else."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_up(str(tiny_spec), "--port", str(port))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr.strip().splitlines()[-1]
    assert result.stderr.strip().splitlines() == [
        f"{tiny_spec}: port: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert result.stdout == ""


@pytest.mark.process
def test_up_on_port_0_serves_on_the_port_its_ready_line_names(
    tiny_spec: Path, tmp_path: Path
) -> None:
    import httpx

    command = mlxdeploy_command("up", str(tiny_spec), "--port", "0")
    with running("mlxdeploy up", command, tmp_path / "up.log", timeout_s=120) as (server, url):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
        assert f"serving tiny on {url}" in server.log()


def test_up_help_lists_the_log_levels(runner: CliRunner) -> None:
    assert "<debug|info|warning|error>" in runner.invoke(app, ["up", "--help"]).output


def test_up_refuses_an_unknown_log_level_in_one_line(runner: CliRunner) -> None:
    result = runner.invoke(app, ["up", str(DEMO), "--log-level", "verbose"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "Error" in line]
    assert len(errors) == 1, result.output
    assert errors[0].startswith("Error: Invalid value for '--log-level'")
    assert "'verbose' is not one of 'debug', 'info', 'warning', 'error'" in errors[0]


@pytest.mark.process
def test_up_serves_an_hf_repo_from_the_cache(tiny_model_dir: Path, tmp_path: Path) -> None:
    """An HF repo id is loaded from the Hugging Face cache without touching the network."""
    import httpx

    snapshot = tmp_path / "hub" / "models--acme--tiny-chat" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    spec = write_spec(tmp_path / "hf.yaml", "acme/tiny-chat", stop=[])
    env = {"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    with start_server(spec, env=env) as server:
        models = httpx.get(f"{server.api_url}/models").json()
        assert [m["id"] for m in models["data"]] == ["acme/tiny-chat"]
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        reply = httpx.post(f"{server.api_url}/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200
        assert reply.json()["usage"]["completion_tokens"] == 2


def test_the_committed_schema_is_current(runner: CliRunner) -> None:
    """configs/ point yaml-language-server at mlxdeploy.schema.json; `make schema` refreshes it."""
    committed = (Path(__file__).parent.parent / "mlxdeploy.schema.json").read_text()
    assert json.loads(committed) == json.loads(runner.invoke(app, ["schema"]).output)
    for config in CONFIGS:
        assert config.read_text().startswith(
            "# yaml-language-server: $schema=../mlxdeploy.schema.json\n"
        )


def test_pre_commit_hook_runs_validate() -> None:
    import yaml

    hooks = yaml.safe_load((Path(__file__).parent.parent / ".pre-commit-hooks.yaml").read_text())
    entries = [(h["id"], h["entry"]) for h in hooks]
    assert entries == [("mlxdeploy-validate", "mlxdeploy validate --no-weights")]


def test_render_shows_the_resolved_spec_and_routes(runner: CliRunner, tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path / "prod.yaml",
        "owner/model",
        port=9000,
        auth={"api_keys_env": "TEAM_KEYS"},
        defaults={"max_tokens": 64},
    )
    result = runner.invoke(app, ["render", str(spec)], env={"MLXDEPLOY_HOST": "0.0.0.0"})
    assert result.exit_code == 0, result.output
    rendered = yaml.safe_load(result.output)
    assert rendered["host"] == "0.0.0.0" and rendered["port"] == 9000
    assert rendered["defaults"]["max_tokens"] == 64
    assert rendered["auth"]["api_keys_env"] == "TEAM_KEYS"
    assert rendered["served"] == [{"id": "owner/model", "source": "hf: owner/model"}]
    assert {"POST /v1/chat/completions", "GET /v1/models", "GET /health", "GET /metrics"} <= set(
        rendered["routes"]
    )


def test_render_masks_values_under_secret_names() -> None:
    from mlxdeploy.render import MASK, masked

    data = {"auth": {"api_keys_env": "K", "token": "abc"}, "x": {"password": "p", "max_tokens": 5}}
    assert masked(data) == {
        "auth": {"api_keys_env": "K", "token": MASK},
        "x": {"password": MASK, "max_tokens": 5},
    }


def test_render_refuses_an_invalid_spec(runner: CliRunner, tmp_path: Path) -> None:
    spec = tmp_path / "broken.yaml"
    spec.write_text(BROKEN)
    result = runner.invoke(app, ["render", str(spec)])
    assert result.exit_code == 1
    assert f"{spec}:2:7: port: " in result.output
