"""Adversarial load on the app in-process, on the real engine.

- A fuzzer: over a thousand malformed requests, each answered with a 4xx OpenAI error body (or
  a normal answer where the request is valid after all), never a 5xx and never an error that
  escapes the app; the app is healthy after. Every request that could be valid asks for at most
  MAX_TOKENS tokens, so the run stays fast. The same probes over a real socket, where a dropped
  connection would show, are in test_http_process.py.
- A soak: 256 concurrent streams, none dropped, every token counted in /metrics.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import real_app, write_spec
from tests.inprocess import InProcessApp
from tests.scrape import scrape

CHAT = "/v1/chat/completions"
MAX_TOKENS = 1
BODY_LIMIT = 256 * 1024
EXAMPLES = 1100
BASE = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS}
FIELDS = (
    "messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "repetition_penalty", "repetition_context_size", "stop", "stream", "stream_options",
    "role_mapping",
)  # fmt: skip
PATHS = (CHAT, "/health", "/metrics", "/v1/models", "/v1/models/tiny", "/", "/v1", "/v1/chat")
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO")
LITERALS = (
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1E+309", "1" + "0" * 5000, "-0",
    "0.000000000000000000000000000000001", "9" * 200, "1.5e-400", "true", "null", '"1"',
)  # fmt: skip
CONTENT_TYPES = (
    "application/json", "text/plain", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz", "application/json; charset=latin-1",
    "application/octet-stream", "", "*/*", "application/json; charset=utf-16",
)  # fmt: skip


@dataclass(frozen=True)
class Probe:
    kind: str
    content: bytes | None = None
    method: str = "POST"
    path: str = CHAT
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})

    def __repr__(self) -> str:
        shown = (self.content or b"")[:300]
        return f"Probe({self.kind}, {self.method} {self.path!r}, {self.headers}, {shown!r})"


def encode(body: object) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


# -- strategies ----------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
unicode_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=200)


def wrong_field() -> st.SearchStrategy[Probe]:
    """A known field set to anything: wrong types, NaN/Infinity, huge and negative numbers."""
    return st.builds(
        lambda name, value: Probe("wrong_field", encode({**BASE, name: value})),
        st.sampled_from(FIELDS),
        values,
    )


def wrong_message() -> st.SearchStrategy[Probe]:
    message = st.dictionaries(st.sampled_from(("role", "content", "name", "type")), values)
    return st.builds(
        lambda messages: Probe("wrong_message", encode({**BASE, "messages": messages})),
        st.lists(message | values, max_size=3),
    )


def unknown_fields() -> st.SearchStrategy[Probe]:
    extra = st.dictionaries(st.text(max_size=20).filter(lambda k: k not in FIELDS), values)
    return st.builds(lambda more: Probe("unknown_fields", encode({**more, **BASE})), extra)


def literal_numbers() -> st.SearchStrategy[Probe]:
    """Number literals json.dumps would never write: NaN, Infinity, overflowing and 5000 digits."""

    def probe(name: str, literal: str) -> Probe:
        head = encode(BASE)[:-1].decode()
        return Probe("literal_numbers", f'{head}, "{name}": {literal}}}'.encode())

    return st.builds(probe, st.sampled_from((*FIELDS, "seed", "n")), st.sampled_from(LITERALS))


def deep_nesting() -> st.SearchStrategy[Probe]:
    def probe(depth: int, brackets: str, where: str) -> Probe:
        open_, close = (
            ("[" * depth, "]" * depth) if brackets == "list" else ('{"a":' * depth, "}" * depth)
        )
        nested = f"{open_}1{close}" if brackets == "dict" else f"{open_}{close}"
        if where == "body":
            text = nested
        else:
            head = encode({k: v for k, v in BASE.items() if k != where})[:-1].decode()
            text = f'{head}, "{where}": {nested}}}'
        return Probe("deep_nesting", text.encode())

    return st.builds(
        probe,
        st.integers(min_value=500, max_value=20000),
        st.sampled_from(("list", "dict")),
        st.sampled_from(("body", "messages", "stop", "extra", "role_mapping")),
    )


def truncated() -> st.SearchStrategy[Probe]:
    body = st.builds(
        lambda more: encode({**BASE, **more}), st.dictionaries(st.text(max_size=8), values)
    )
    return st.builds(
        lambda raw, cut: Probe("truncated", raw[: int(cut * (len(raw) - 1))]),
        body,
        st.floats(min_value=0, max_value=1, exclude_max=True),
    )


def garbage() -> st.SearchStrategy[Probe]:
    return st.builds(lambda raw: Probe("garbage", raw), st.binary(max_size=2000))


def content_types() -> st.SearchStrategy[Probe]:
    printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
    kind = st.sampled_from(CONTENT_TYPES) | printable.map(str.strip)  # h11 refuses edge spaces
    return st.builds(
        lambda ctype, stream: Probe(
            "content_type", encode({**BASE, "stream": stream}), headers={"content-type": ctype}
        ),
        kind,
        st.booleans(),
    )


def methods() -> st.SearchStrategy[Probe]:
    printable = st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_categories=["Cc"])
    odd_path = st.text(printable, max_size=40)  # httpx refuses control characters in URLs
    path = st.sampled_from(PATHS) | odd_path.map(lambda p: "/" + p.lstrip("/"))
    return st.builds(
        lambda method, where, body: Probe("method", body, method=method, path=where),
        st.sampled_from(METHODS),
        path,
        st.none() | st.just(encode(BASE)) | st.binary(max_size=50),
    )


def unicode() -> st.SearchStrategy[Probe]:
    """Any text where text goes, with lone surrogate escapes and invalid UTF-8 spliced into it,
    in UTF-8 or UTF-16 bodies."""
    marker = "\ue000"  # a private-use character the text strategy never draws

    def probe(name: str, text: str, raw_escape: str | None, utf16: bool) -> Probe:
        text += marker
        body = dict(BASE)
        if name == "content":
            body["messages"] = [{"role": "user", "content": text}]
        elif name == "role_mapping":
            body[name] = {"user": text}
        else:
            body[name] = [text] if name == "stop" else text
        splice = (raw_escape or "").encode("latin-1")
        raw = encode(body).replace(marker.encode(), splice, 1)
        if utf16:
            try:
                raw = raw.decode("utf-8").encode("utf-16")
            except UnicodeDecodeError:
                pass  # invalid UTF-8 on purpose: sent as it is
        return Probe("unicode", raw)

    escapes = st.sampled_from(
        ("\\ud800", "\\udfff", "\\ud83d", "\\ud83d\\ude00", "\\u0000", "\xff", "\xc3", "\\x41")
    )
    return st.builds(
        probe,
        st.sampled_from(("content", "model", "stop", "role_mapping", "unknown")),
        unicode_text.filter(lambda t: marker not in t),
        st.none() | escapes,
        st.booleans(),
    )


def long_strings() -> st.SearchStrategy[Probe]:
    """Strings of up to most of the body limit, in every place a string goes."""

    def probe(name: str, char: str, size: int) -> Probe:
        text = char * min(size, (BODY_LIMIT - 1024) // len(char.encode("utf-8")))
        body: dict[str, object] = dict(BASE)
        if name == "content":
            body["messages"] = [{"role": "user", "content": text}]
        elif name == "stop":
            body["stop"] = [text]
        elif name == "role_mapping":
            body["role_mapping"] = {"system_prompt": text}
        else:
            body[name] = text
        return Probe("long_string", encode(body))

    return st.builds(
        probe,
        st.sampled_from(("content", "model", "stop", "role_mapping", "note")),
        st.characters(codec="utf-8", exclude_characters='"\\'),
        st.integers(min_value=1000, max_value=BODY_LIMIT),
    )


def probes() -> st.SearchStrategy[Probe]:
    return st.one_of(
        wrong_field(), wrong_message(), unknown_fields(), literal_numbers(), deep_nesting(),
        truncated(), garbage(), content_types(), methods(), unicode(), long_strings(),
    )  # fmt: skip


# -- the run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    spec = write_spec(
        tmp_path_factory.mktemp("fuzz") / "fuzz.yaml",
        tiny_model_dir,
        name="tiny",
        defaults={"max_tokens": MAX_TOKENS},
        limits={"max_tokens": MAX_TOKENS, "max_body_bytes": BODY_LIMIT},
    )
    with real_app(spec) as served:
        yield served.http


def send(http: httpx.Client, probe: Probe, headers: dict[str, str] | None = None) -> httpx.Response:
    try:
        return http.request(
            probe.method,
            probe.path,
            content=probe.content,
            headers={**probe.headers, **(headers or {})},
        )
    except httpx.TransportError as exc:
        raise AssertionError(f"the connection dropped: {exc!r} for {probe!r}") from None


def check(response: httpx.Response, probe: Probe) -> None:
    status = response.status_code
    assert status < 500, f"{status} {response.text[:500]!r} for {probe!r}"
    if probe.method == "HEAD" or status in (204, 304):
        return
    if status >= 400:
        assert response.headers["content-type"].startswith("application/json"), probe
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, probe
        assert isinstance(error["message"], str) and error["message"], probe
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]", f"{lines[-3:]} for {probe!r}"


def test_malformed_requests_get_4xx_and_the_server_stays_healthy(http: httpx.Client) -> None:
    sent: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(probes())
    def fuzz(probe: Probe) -> None:
        sent.append(probe.kind)
        check(send(http, probe), probe)

    fuzz()
    assert len(sent) >= 1000
    assert http.get("/health").status_code == 200
    reply = http.post(CHAT, json=BASE)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["finish_reason"] in ("stop", "length")


# -- the soak ------------------------------------------------------------------------------

SOAK_STREAMS = 256
SOAK_TOKENS = 16


def soak_stream(app: InProcessApp, index: int) -> tuple[int, list[str]]:
    body = {
        "messages": [{"role": "user", "content": f"Stream number {index}, go."}],
        "max_tokens": SOAK_TOKENS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with app.client(timeout=300) as client, client.stream("POST", CHAT, json=body) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        return response.status_code, lines


def soak(app: InProcessApp) -> list[tuple[int, list[str]] | BaseException]:
    """Every stream at once, each on its own client and thread."""
    with ThreadPoolExecutor(SOAK_STREAMS) as pool:
        streams = [pool.submit(soak_stream, app, i) for i in range(SOAK_STREAMS)]
        return [stream.exception() or stream.result() for stream in streams]


def test_256_concurrent_streams_soak_with_none_dropped(tiny_app: InProcessApp) -> None:
    http = tiny_app.http
    before = scrape(http)
    results = soak(tiny_app)
    dropped = [r for r in results if isinstance(r, BaseException)]
    assert not dropped, f"{len(dropped)} streams dropped, first: {dropped[0]!r}"
    completed = [r for r in results if not isinstance(r, BaseException)]
    assert [status for status, _ in completed] == [200] * SOAK_STREAMS
    assert all(lines[-1] == "data: [DONE]" for _, lines in completed)
    events = [json.loads(line[6:]) for _, lines in completed for line in lines[:-1]]
    errors = [event for event in events if "error" in event]  # not a delta that says "error"
    assert not errors, errors[:3]
    usages = [json.loads(lines[-2][6:])["usage"] for _, lines in completed]
    delta = scrape(http) - before
    assert delta.value("mlxdeploy_completion_tokens_total", model="tiny") == sum(
        u["completion_tokens"] for u in usages
    )
    assert delta.value("mlxdeploy_time_to_first_token_seconds_count", model="tiny") == SOAK_STREAMS
    idle = scrape(http)
    assert idle.value("mlxdeploy_batch_size", model="tiny") == 0
    assert idle.value("mlxdeploy_queue_depth", model="tiny") == 0
    assert http.get("/health").status_code == 200
