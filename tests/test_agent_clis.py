"""The coding agents' own CLIs against a real `mlxdeploy up`: Claude Code (Messages API) and
Codex (Responses API) each run a session with a tool round trip on a thinking model, opencode
(chat completions) completes a turn with a tool call, aider (chat completions) completes a turn.

The CLIs are test dependencies, installed under .agents/ by `make test`
(scripts/install-agents.sh). Each runs with a home of its own, its telemetry, updates and
catalogue downloads off, and stdin closed (codex and opencode wait on an open one).

The thinking model is tiny and random, so the spec makes its choices for it, with biases:
- it thinks in a special token (`<|im_start|>`, the strongest bias) until its budget of 4
  closes the thinking: a grammar never allows a special token, so past the thinking this bias
  does nothing where a grammar holds;
- the answer to a user message is one forced tool call with schema-valid arguments
  (`defaults.tool_choice: required`), whose strings end at once (a bias on the quote token);
- after the tool result the model chooses (auto): its answer is one quote, then the end of the
  turn (a bias on the end-of-sequence token, weaker than the thinking's, stronger than the
  quote's).
aider offers no tools; it talks to the demo model, which answers for real."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEMO_MODEL
from tests.servers import RunningServer, start_server

pytestmark = pytest.mark.process

ROOT = Path(__file__).parent.parent
AGENTS = Path(os.environ.get("MLXDEPLOY_AGENTS_DIR", ROOT / ".agents"))
BIN = AGENTS / "node" / "node_modules" / ".bin"
SPECIAL, EOS, QUOTE = 1, 2, 18  # SmolLM2's <|im_start|>, <|im_end|> and '"'
TIMEOUT = 240


def spec_text(thinking_model_dir: Path) -> str:
    forced = {
        "max_tokens": 64,
        "temperature": 0.0,
        "tool_choice": "required",
        "logit_bias": {str(SPECIAL): 40, str(EOS): 30, str(QUOTE): 12},
    }
    budgets = dict.fromkeys(("minimal", "low", "medium", "high", "xhigh", "max"), 4)
    spec = {
        "engine": {"warmup": False},
        "limits": {"max_tokens": 64},
        "models": [
            {
                "id": "thinker",
                "model": str(thinking_model_dir),
                "defaults": forced,
                "reasoning": {"effort": "low", "budgets": budgets, "seal_key": "k" * 32},
            },
            {"id": "demo", "model": DEMO_MODEL, "defaults": {"max_tokens": 48}},
        ],
    }
    return json.dumps(spec)  # JSON is YAML


@pytest.fixture(scope="module")
def server(
    thinking_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> Iterator[RunningServer]:
    missing = [name for name in ("claude", "codex", "opencode") if not (BIN / name).exists()]
    assert not missing, f"{missing} not installed: run scripts/install-agents.sh (make agents)"
    spec = tmp_path_factory.mktemp("agents") / "agents.yaml"
    spec.write_text(spec_text(thinking_model_dir))
    with start_server(spec, timeout=300) as running:
        yield running


def run(command: list[str], home: Path, env: dict[str, str], cwd: Path) -> Any:
    base = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "SHELL": "/bin/bash",
        "TERM": "dumb",
        "NO_COLOR": "1",
    }
    return subprocess.run(
        command,
        env={**base, **env},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def access_lines(server: RunningServer, route: str) -> list[str]:
    return [line for line in server.log().splitlines() if f'"POST {route}' in line]


def test_claude_code_runs_a_session_with_a_tool_round_trip(
    server: RunningServer, tmp_path: Path
) -> None:
    before = len(access_lines(server, "/v1/messages"))
    env = {
        "ANTHROPIC_BASE_URL": server.base_url,
        "ANTHROPIC_API_KEY": "unused",
        "ANTHROPIC_MODEL": "thinker",
        "ANTHROPIC_SMALL_FAST_MODEL": "thinker",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": "thinker",
        "CLAUDE_CONFIG_DIR": str(tmp_path / ".claude"),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_MAX_RETRIES": "1",
    }
    command = [str(BIN / "claude"), "-p", "Say hi with the shell.", "--output-format", "json"]
    command += ["--max-turns", "4", "--model", "thinker", "--tools", "Bash"]
    command += ["--allowedTools", "Bash"]
    done = run(command, tmp_path, env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["is_error"] is False and result["num_turns"] >= 2, result
    assert result["usage"]["cache_read_input_tokens"] > 0  # the second turn hit the cache
    turns = access_lines(server, "/v1/messages")[before:]
    assert len(turns) >= 2, turns
    # The first answer's thinking block, signed (Claude Code keeps it in its transcript), came
    # back with the tool result, and its signature opened: nothing of it was left out.
    transcript = "".join(p.read_text() for p in (tmp_path / ".claude").rglob("*.jsonl"))
    assert '"type":"thinking"' in transcript and '"signature":"gAAAA' in transcript
    assert not any("messages[" in line for line in turns), turns


def test_codex_runs_a_session_with_a_tool_round_trip(server: RunningServer, tmp_path: Path) -> None:
    before = len(access_lines(server, "/v1/responses"))
    codex_home = tmp_path / ".codex"
    codex_home.mkdir()
    (codex_home / "config.toml").write_text(codex_config(server.api_url))
    env = {"CODEX_HOME": str(codex_home), "MLXDEPLOY_API_KEY": "unused"}
    command = [str(BIN / "codex"), "exec", "--skip-git-repo-check", "--color", "never"]
    command += ["--dangerously-bypass-approvals-and-sandbox", "-C", str(tmp_path), "Say hi."]
    done = run(command, tmp_path, env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    turns = access_lines(server, "/v1/responses")[before:]
    assert len(turns) >= 2, turns  # a tool call, its output sent back, the final answer
    # Codex keeps nothing on the server (store: false): each turn sends the reasoning items
    # back with their encrypted_content (its session log keeps them), which this deployment
    # sealed and opens again.
    sessions = "".join(p.read_text() for p in codex_home.rglob("*.jsonl"))
    assert '"encrypted_content":"gAAAA' in sessions
    assert not any("encrypted_content" in line for line in turns), turns
    assert all(re.search(r"unused=.*tools\[\d+\]", line) for line in turns)  # web_search


def codex_config(api_url: str) -> str:
    return f"""model = "thinker"
model_provider = "mlxdeploy"
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false
model_context_window = 32768

[model_providers.mlxdeploy]
name = "mlxdeploy"
base_url = "{api_url}"
env_key = "MLXDEPLOY_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[features]
plugins = false
remote_plugin = false
apps = false

[otel]
exporter = "none"
"""


def test_opencode_completes_a_turn_with_a_tool_call(server: RunningServer, tmp_path: Path) -> None:
    before = len(access_lines(server, "/v1/chat/completions"))
    config = tmp_path / ".config" / "opencode"
    (config / "node_modules").mkdir(parents=True)  # its plugin install finds nothing to do
    lock = {"lockfileVersion": 3, "packages": {"": {"dependencies": {"@opencode-ai/plugin": "*"}}}}
    (config / "package-lock.json").write_text(json.dumps(lock))
    (config / "opencode.json").write_text(json.dumps(opencode_config(server.api_url)))
    env = {
        "MLXDEPLOY_API_KEY": "unused",
        **dict.fromkeys(
            (
                "OPENCODE_DISABLE_MODELS_FETCH",
                "OPENCODE_DISABLE_AUTOUPDATE",
                "OPENCODE_DISABLE_LSP_DOWNLOAD",
                "OPENCODE_DISABLE_DEFAULT_PLUGINS",
                "OPENCODE_DISABLE_SHARE",
                "OPENCODE_PURE",
            ),
            "1",
        ),
    }
    command = [str(BIN / "opencode"), "run", "--model", "mlxdeploy/thinker", "Say hi."]
    done = run(command, tmp_path, env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    turns = access_lines(server, "/v1/chat/completions")[before:]
    assert len(turns) >= 2, turns  # (a title,) the call, the answer after its result


def opencode_config(api_url: str) -> dict[str, Any]:
    model = {"name": "thinker", "tool_call": True, "limit": {"context": 32768, "output": 4096}}
    return {
        "autoupdate": False,
        "share": "disabled",
        "model": "mlxdeploy/thinker",
        "small_model": "mlxdeploy/thinker",
        "provider": {
            "mlxdeploy": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "mlxdeploy",
                "options": {"baseURL": api_url, "apiKey": "{env:MLXDEPLOY_API_KEY}"},
                "models": {"thinker": model},
            }
        },
    }


def test_aider_completes_a_turn(server: RunningServer, tmp_path: Path) -> None:
    aider = AGENTS / "aider" / "bin" / "aider"
    assert aider.exists(), "aider not installed: run scripts/install-agents.sh (make agents)"
    limits = {"max_input_tokens": 8192, "max_output_tokens": 48, "max_tokens": 48}
    metadata = {"openai/demo": {**limits, "litellm_provider": "openai", "mode": "chat"}}
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    env = {
        "OPENAI_API_BASE": server.api_url,
        "OPENAI_API_KEY": "unused",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "AIDER_ANALYTICS": "false",
        "AIDER_CHECK_UPDATE": "false",
    }
    command = [str(aider), "--message", "What is the capital of France?", "--model", "openai/demo"]
    command += ["--model-metadata-file", str(tmp_path / "metadata.json"), "--no-git"]
    command += ["--yes-always", "--no-check-update", "--no-show-model-warnings", "--no-pretty"]
    command += ["--no-analytics", "--no-show-release-notes", "--no-fancy-input"]
    done = run(command, tmp_path, env, tmp_path)
    # aider exits 0 on errors too: its output says how the turn went.
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Error" not in done.stdout and "Empty response" not in done.stdout, done.stdout
    assert re.search(r"Tokens: [\d,.k]+ sent, [\d,.k]+ received", done.stdout), done.stdout
