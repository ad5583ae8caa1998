"""The request bodies coding-agent CLIs really send (tests/data/agents/<cli>/, recorded against
a stub), replayed in-process with their recorded paths and headers: Claude Code's Messages
requests, Codex's Responses requests, opencode's and aider's chat completions.

On a scripted thinking engine every one is answered and streams to its API's last event, and
`X-Unused-Fields` names the hints each CLI sends (Claude Code's `metadata`, Codex's hosted
web_search tool, prompt_cache_key and client_metadata). On the real engine (the tiny thinking
model, a 32k context, small thinking budgets) each CLI's first request answers with its
thinking first, its second (after the tool result) answers too, and the second turn reads
most of its prompt from the prefix cache.

A random model never closes its thinking by itself: the spec's budgets (8 tokens) close it.
The real-engine replays run at temperature 0 (added to the recorded bodies) so that every
answer thinks its whole budget."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlxdeploy.api.unused import HEADER
from tests.conftest import real_app, scripted_app, write_spec
from tests.inprocess import InProcessApp
from tests.scripted import ScriptedEngine

AGENTS = Path(__file__).parent / "data" / "agents"
MODEL = "mlx-community/Qwen3-4B-4bit"  # the model id the CLIs were configured with
BUDGET = 8  # thinking tokens of every effort in the real-engine spec
THOUGHT_TOKENS = BUDGET + 1  # the budget, then the end tag it forces
LAST_EVENT = {
    "/v1/messages": "message_stop",
    "/v1/responses": "response.completed",
    "/v1/chat/completions": "[DONE]",
}


@dataclass(frozen=True)
class Recorded:
    """One recorded request of a CLI."""

    cli: str
    name: str  # its body's file name
    method: str
    path: str  # with its query (Claude Code's ?beta=true)
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def route(self) -> str:
        return self.path.partition("?")[0]

    def __str__(self) -> str:
        return f"{self.cli}/{self.name}"


def load_recorded() -> list[Recorded]:
    out = []
    for folder in sorted(AGENTS.iterdir()):
        index = json.loads((folder / "requests.json").read_text())
        for entry in index["requests"]:
            body = json.loads((folder / entry["body"]).read_text())
            headers = {k: v for k, v in entry["headers"].items() if k != "accept-encoding"}
            out.append(
                Recorded(folder.name, entry["body"], entry["method"], entry["path"], headers, body)
            )
    return out


RECORDED = load_recorded()


def recorded(cli: str, name: str) -> Recorded:
    return next(r for r in RECORDED if r.cli == cli and r.name == name)


@dataclass
class Replayed:
    """A replay's answer: its status, headers and (streamed or not) body."""

    status: int
    headers: httpx.Headers
    text: str

    def unused(self) -> set[str]:
        """The paths `X-Unused-Fields` names (details in parentheses left out)."""
        value = self.headers.get(HEADER, "")
        return {entry.split(" (")[0] for entry in value.split(", ") if entry}

    def json(self) -> dict[str, Any]:
        return json.loads(self.text)  # type: ignore[no-any-return]

    def events(self) -> list[tuple[str | None, Any]]:
        """The stream's events: (the `event:` name or None, the data parsed; [DONE] as is)."""
        out: list[tuple[str | None, Any]] = []
        kind = None
        for line in self.text.splitlines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
                out.append((kind, data if data == "[DONE]" else json.loads(data)))
                kind = None
        return out


def replay(http: httpx.Client, request: Recorded, **overrides: Any) -> Replayed:
    body = {**request.body, **overrides}
    with http.stream(request.method, request.path, json=body, headers=request.headers) as answer:
        text = answer.read().decode()
    return Replayed(answer.status_code, answer.headers, text)


def last_event(replayed: Replayed) -> str:
    kind, data = replayed.events()[-1]
    return data if data == "[DONE]" else kind or data["type"]


# -- a scripted thinking engine: every request, its hints named -----------------------------


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessApp]:
    spec = write_spec(tmp_path_factory.mktemp("agents") / "s.yaml", "owner/model", name=MODEL)
    engine = ScriptedEngine(model_id=MODEL, context_length=1 << 20, thoughts=("Hm", "m."))
    with scripted_app(spec, engine) as app:
        yield app


@pytest.mark.parametrize("request_", RECORDED, ids=str)
def test_every_recorded_request_streams_to_its_end(
    scripted: InProcessApp, request_: Recorded
) -> None:
    assert request_.body["stream"] is True  # every CLI streams
    replayed = replay(scripted.http, request_)
    assert replayed.status == 200, replayed.text
    assert last_event(replayed) == LAST_EVENT[request_.route]
    assert thinks_first(request_.route, replayed)


def thinks_first(route: str, replayed: Replayed) -> bool:
    """Whether the stream's first content is thinking, in its API's words."""
    for kind, data in replayed.events():
        if kind == "content_block_start":
            return data["content_block"]["type"] == "thinking"  # type: ignore[no-any-return]
        if kind == "response.output_item.added":
            return data["item"]["type"] == "reasoning"  # type: ignore[no-any-return]
        if kind is None and data != "[DONE]" and data["choices"]:
            delta = data["choices"][0]["delta"]
            if delta.get("reasoning_content") or delta.get("content") or delta.get("tool_calls"):
                return bool(delta.get("reasoning_content"))
    return False


# What each CLI sends that the answer does not use (at least these; the CLIs' max_tokens
# of 32000 is also clamped to limits.max_tokens).
HINTS = {
    "claude-code": {"metadata", "max_tokens"},
    "codex": {"prompt_cache_key", "client_metadata", "tools[8]"},
    "opencode": set(),
    "aider": set(),
}


@pytest.mark.parametrize("request_", RECORDED, ids=str)
def test_the_hints_each_cli_sends_are_named(scripted: InProcessApp, request_: Recorded) -> None:
    replayed = replay(scripted.http, request_)
    assert replayed.status == 200, replayed.text
    assert HINTS[request_.cli] <= replayed.unused()
    if not HINTS[request_.cli]:
        assert HEADER not in replayed.headers
    if request_.cli == "codex":  # the hosted tool is named with its type
        assert "tools[8] (web_search)" in replayed.headers[HEADER]
        assert request_.body["tools"][8]["type"] == "web_search"


def test_claude_codes_thinking_is_a_hint_to_a_model_that_does_not_think(
    tmp_path: Path,
) -> None:
    spec = write_spec(tmp_path / "s.yaml", "owner/model", name=MODEL)
    with scripted_app(spec, ScriptedEngine(model_id=MODEL, context_length=1 << 20)) as app:
        replayed = replay(app.http, recorded("claude-code", "01-messages.json"))
    assert replayed.status == 200, replayed.text
    assert "thinking" in replayed.unused()
    assert not thinks_first("/v1/messages", replayed)


# -- the real engine on the tiny thinking model ---------------------------------------------


@pytest.fixture(scope="module")
def thinker(
    thinking_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessApp]:
    spec = write_spec(
        tmp_path_factory.mktemp("agents-real") / "thinking.yaml",
        thinking_model_dir,
        name=MODEL,
        reasoning={"budgets": {"high": BUDGET, "medium": BUDGET, "low": BUDGET}, "effort": "low"},
        limits={"max_tokens": 48},  # the CLIs ask for up to 32000
    )
    with real_app(spec) as app:
        yield app


def real_replay(app: InProcessApp, request_: Recorded, stream: bool) -> Replayed:
    replayed = replay(app.http, request_, stream=stream, temperature=0.0)
    assert replayed.status == 200, replayed.text
    return replayed


def test_claude_codes_first_request_streams_its_thinking_first(thinker: InProcessApp) -> None:
    replayed = real_replay(thinker, recorded("claude-code", "01-messages.json"), stream=True)
    events = [data for _, data in replayed.events()]
    first = next(e for e in events if e["type"] == "content_block_start")
    assert first["index"] == 0 and first["content_block"]["type"] == "thinking"
    block = [e for e in events if e.get("index") == 0]
    deltas = [e["delta"] for e in block if e["type"] == "content_block_delta"]
    assert deltas[-1]["type"] == "signature_delta" and deltas[-1]["signature"]
    assert {d["type"] for d in deltas[:-1]} == {"thinking_delta"}
    assert "".join(d["thinking"] for d in deltas[:-1]).strip()
    assert block[-1]["type"] == "content_block_stop"
    usage = next(e for e in events if e["type"] == "message_delta")["usage"]
    assert usage["output_tokens_details"]["thinking_tokens"] == THOUGHT_TOKENS
    assert events[-1]["type"] == "message_stop"
    assert "max_tokens" in replayed.unused()


def test_codexs_first_request_streams_its_reasoning_first(thinker: InProcessApp) -> None:
    replayed = real_replay(thinker, recorded("codex", "01-responses.json"), stream=True)
    events = [data for _, data in replayed.events()]
    added = next(e for e in events if e["type"] == "response.output_item.added")
    assert added["output_index"] == 0 and added["item"]["type"] == "reasoning"
    deltas = [e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta"]
    done = events[-1]
    assert done["type"] in ("response.completed", "response.incomplete")
    item = done["response"]["output"][0]
    assert item["type"] == "reasoning" and item["encrypted_content"]  # Codex includes it
    assert item["summary"][0]["text"] == "".join(deltas) != ""
    usage = done["response"]["usage"]
    assert usage["output_tokens_details"]["reasoning_tokens"] == THOUGHT_TOKENS


@pytest.mark.parametrize("name", ["02-chat-completions.json", "03-chat-completions.json"])
def test_opencodes_requests_stream_reasoning_content_first(
    thinker: InProcessApp, name: str
) -> None:
    """The first with its tools, the second with the tool's result."""
    replayed = real_replay(thinker, recorded("opencode", name), stream=True)
    assert last_event(replayed) == "[DONE]"
    assert thinks_first("/v1/chat/completions", replayed)
    chunks = [data for _, data in replayed.events()[:-1]]
    usage = chunks[-1]["usage"]  # opencode asks for it (stream_options.include_usage)
    assert usage["completion_tokens_details"]["reasoning_tokens"] == THOUGHT_TOKENS


def test_aiders_request_answers_with_reasoning_content(thinker: InProcessApp) -> None:
    """Sampled (with a seed): this random model's greedy thinking on aider's prompt is blank
    lines, which are trimmed away."""
    aider = recorded("aider", "01-chat-completions.json")
    answer = replay(thinker.http, aider, stream=False, temperature=1.0, seed=7)
    assert answer.status == 200, answer.text
    message = answer.json()["choices"][0]["message"]
    assert message["reasoning_content"] and "<think>" not in (message["content"] or "")
    usage = answer.json()["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == THOUGHT_TOKENS


def test_claude_codes_second_turn_reads_the_first_from_the_prefix_cache(
    thinker: InProcessApp,
) -> None:
    """The tool result's turn (no thinking block sent back: the stub gave none) answers too,
    and reads nearly all of its prompt from the cache the first turn left."""
    first = real_replay(thinker, recorded("claude-code", "01-messages.json"), stream=False)
    message = first.json()
    assert message["content"][0]["type"] == "thinking"
    assert message["content"][0]["thinking"] and message["content"][0]["signature"]
    usage = message["usage"]
    prompt = usage["input_tokens"] + usage["cache_read_input_tokens"]
    assert prompt > 10_000  # the system prompt and the 24 tools

    second = real_replay(thinker, recorded("claude-code", "02-messages.json"), stream=False)
    again = second.json()
    assert again["content"][0]["type"] == "thinking"
    cached = again["usage"]["cache_read_input_tokens"]
    assert 0.9 * prompt < cached <= prompt
    assert again["usage"]["input_tokens"] < 0.1 * prompt


def test_codexs_second_turn_reads_the_first_from_the_prefix_cache(
    thinker: InProcessApp,
) -> None:
    first = real_replay(thinker, recorded("codex", "01-responses.json"), stream=False)
    response = first.json()
    assert response["output"][0]["type"] == "reasoning"
    prompt = response["usage"]["input_tokens"]  # OpenAI counts the cached ones in it
    assert prompt > 5_000

    second = real_replay(thinker, recorded("codex", "02-responses.json"), stream=False)
    again = second.json()
    assert again["output"][0]["type"] == "reasoning"
    cached = again["usage"]["input_tokens_details"]["cached_tokens"]
    assert 0.9 * prompt < cached <= prompt < again["usage"]["input_tokens"]
