"""`mlxdeploy bench`: statistics on synthetic numbers, stream parsing, and real runs against
`mlxdeploy up` of the tiny model. Nothing here asserts a speed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from mlxdeploy.bench import BenchError
from mlxdeploy.bench.load import error_name, make_prompt, read_stream
from mlxdeploy.bench.report import (
    LevelStats,
    LoadSettings,
    RequestResult,
    ServerReport,
    blas_line,
    compare_levels,
    percentile,
    summarize,
)
from mlxdeploy.bench.run import Target, build_options, parse_concurrency, planned_targets, same_blas
from mlxdeploy.bench.servers import READY_LINE, resolve_model_dir, running
from mlxdeploy.cli import app
from mlxdeploy.spec import load_spec
from tests.conftest import DEMO_MODEL, write_spec
from tests.servers import RunningServer

LEVEL_FIELDS = {
    "concurrency", "requests", "completed", "errors", "error_pct", "error_types",
    "short_completions", "output_tokens", "wall_s", "throughput_tok_s", "ttft_p50_s",
    "ttft_p99_s", "latency_p50_s", "latency_p99_s", "warmup_error", "draft_acceptance",
}  # fmt: skip


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("q", [0, 1, 50, 90, 99, 100])
@pytest.mark.parametrize("values", [[3.0], [2.0, 1.0], [float(v) for v in range(1, 101)],
                                    [0.5, 9.0, 0.1, 4.2, 4.2, 7.7, 1e-3]])  # fmt: skip
def test_percentile_matches_numpy(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None


def test_summarize_counts_only_completed_requests() -> None:
    results = [
        RequestResult(latency_s=1.0, ttft_s=0.1, output_tokens=64),
        RequestResult(latency_s=2.0, ttft_s=0.3, output_tokens=64),
        RequestResult(latency_s=3.0, ttft_s=0.2, output_tokens=10),  # stopped early
        RequestResult(latency_s=0.01, error="connect_error"),
        RequestResult(latency_s=9.0, ttft_s=5.0, output_tokens=3, error="remote_protocol_error"),
        RequestResult(latency_s=0.02, error="connect_error"),
    ]
    stats = summarize(8, results, wall_s=4.0, max_tokens=64)
    assert (stats.concurrency, stats.requests, stats.completed, stats.errors) == (8, 6, 3, 3)
    assert stats.error_pct == pytest.approx(50.0)
    assert stats.error_types == {"connect_error": 2, "remote_protocol_error": 1}
    assert stats.output_tokens == 138
    assert stats.throughput_tok_s == pytest.approx(138 / 4.0)
    assert stats.short_completions == 1
    assert stats.ttft_p50_s == pytest.approx(0.2)
    assert stats.latency_p50_s == pytest.approx(2.0)
    assert stats.latency_p99_s == pytest.approx(np.percentile([1.0, 2.0, 3.0], 99))


def test_summarize_a_level_where_everything_failed() -> None:
    stats = summarize(2, [RequestResult(0.1, error="read_timeout")] * 2, 0.5, 16)
    assert (stats.completed, stats.errors, stats.error_pct) == (0, 2, 100.0)
    assert stats.throughput_tok_s == 0.0
    assert stats.ttft_p99_s is None and stats.latency_p50_s is None


def _level(concurrency: int, throughput: float, ttft_p99: float | None) -> LevelStats:
    stats = summarize(concurrency, [], 1.0, 1)
    stats.throughput_tok_s, stats.ttft_p99_s = throughput, ttft_p99
    return stats


def test_ratios_are_mlxdeploy_over_mlx_lm_per_shared_level() -> None:
    ours = ServerReport("mlxdeploy", "u", levels=[_level(1, 30, 0.2), _level(8, 200, 0.5)])
    theirs = ServerReport("mlx_lm.server", "v", levels=[_level(1, 20, 0.1), _level(32, 1, 1)])
    (only,) = compare_levels(ours, theirs)
    assert only.concurrency == 1
    assert only.throughput == pytest.approx(1.5)
    assert only.ttft_p99 == pytest.approx(2.0)
    (zero,) = compare_levels(ServerReport("a", "u", levels=[_level(1, 5, None)]),
                             ServerReport("b", "v", levels=[_level(1, 0, 0.1)]))  # fmt: skip
    assert zero.throughput is None and zero.ttft_p99 is None


# --------------------------------------------------------------------------- one request


def _events(*chunks: object) -> AsyncIterator[str]:
    async def lines() -> AsyncIterator[str]:
        for chunk in chunks:
            yield chunk if isinstance(chunk, str) else f"data: {json.dumps(chunk)}"
            yield ""

    return lines()


def _delta(content: str | None) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}


def _read(lines: AsyncIterator[str]) -> RequestResult:
    return asyncio.run(read_stream(lines, start=0.0))


def test_stream_tokens_come_from_usage_when_sent() -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5}}
    result = _read(_events(_delta(""), _delta("a"), _delta("bc"), ": ping", usage, "data: [DONE]"))
    assert result.error is None
    assert result.output_tokens == 5
    assert result.ttft_s is not None and result.ttft_s <= result.latency_s


def test_stream_tokens_are_counted_from_deltas_without_usage() -> None:
    result = _read(_events(_delta(None), _delta("x"), _delta("y"), _delta("z"), "data: [DONE]"))
    assert (result.error, result.output_tokens) == (None, 3)


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ((_delta("a"), {"error": {"message": "boom"}}), "stream_error_event"),
        ((_delta("a"), "data: {not json"), "malformed_stream"),
        (({"choices": [{"delta": "text"}]},), "malformed_stream"),
        ((_delta("a"), _delta("b")), "incomplete_stream"),
    ],
)
def test_broken_streams_are_errors(lines: tuple[object, ...], error: str) -> None:
    assert _read(_events(*lines)).error == error


def test_error_names_are_snake_case_exception_names() -> None:
    assert error_name(httpx.RemoteProtocolError("x")) == "remote_protocol_error"
    assert error_name(httpx.ReadTimeout("x")) == "read_timeout"
    assert error_name(ConnectionResetError()) == "connection_reset_error"


def test_prompts_are_reproducible_and_about_the_asked_length() -> None:
    assert make_prompt(50, "1-0-0") == make_prompt(50, "1-0-0")
    assert make_prompt(50, "1-0-0") != make_prompt(50, "1-0-1")
    assert 50 <= len(make_prompt(50, "s").split()) <= 55


def test_blas_line_finds_the_library_in_a_log() -> None:
    log = "12:00 INFO x: loading\n12:01 INFO mlxdeploy: BLAS: openblas (/usr/lib/libopenblas.so)\n"
    assert blas_line(log) == "openblas (/usr/lib/libopenblas.so)"
    assert blas_line("nothing here") is None


def test_mlx_lm_server_gets_the_blas_library_mlxdeploy_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    target = Target("mlx_lm.server", "http://x", ["python"])
    ours = ServerReport("mlxdeploy", "u", blas="openblas (/usr/lib/libopenblas.so.0)")
    assert same_blas(target, [ours]).env == {"LD_PRELOAD": "/usr/lib/libopenblas.so.0"}
    ours.blas = "reference; OpenBLAS not found"
    assert same_blas(target, [ours]) == target


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("text", ["", "0", "1,x", "4,-1"])
def test_bad_concurrency_is_one_line(text: str) -> None:
    with pytest.raises(BenchError, match="--concurrency"):
        parse_concurrency(text)


def test_concurrency_list() -> None:
    assert parse_concurrency("1, 8,32") == (1, 8, 32)


@pytest.mark.parametrize(
    ("url", "spec", "compare", "message"),
    [
        (None, None, False, "either --url"),
        ("http://x", Path("s.yaml"), False, "either --url"),
        ("http://x", None, True, "--compare needs --spec"),
    ],
)
def test_flag_combinations(url: str | None, spec: Path | None, compare: bool, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        build_options(LoadSettings((1,)), None, url, spec, compare)


def test_cli_reports_a_bad_flag_in_one_line() -> None:
    result = CliRunner().invoke(app, ["bench", "--url", "http://127.0.0.1:9", "--concurrency", "x"])
    assert result.exit_code == 1
    assert "--concurrency" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- real runs


def _bench(out: Path, *args: str) -> dict[str, object]:
    return _run_bench(out, *args)[0]


def _run_bench(out: Path, *args: str) -> tuple[dict[str, object], str]:
    """The report's JSON and what the command printed."""
    common = ["--concurrency", "1,2", "--max-tokens", "8", "--prompt-tokens", "16"]
    result = CliRunner().invoke(app, ["bench", *common, "--requests-per-client", "2",
                                      "--out", str(out), *args])  # fmt: skip
    assert result.exit_code == 0, result.output
    data: dict[str, object] = json.loads((out / "bench.json").read_text())
    return data, result.output


def _check_report(data: dict[str, object], out: Path, servers: list[str]) -> None:
    assert {"command", "started_at", "machine", "settings", "servers", "ratios", "files"} <= set(
        data
    )
    machine = data["machine"]
    assert isinstance(machine, dict)
    assert machine["cpu_count"] and machine["mlx"] and machine["mlx_lm"] and machine["platform"]
    assert isinstance(data["command"], str) and data["command"]  # the invoking command line
    assert data["settings"] == {
        "concurrency": [1, 2], "max_tokens": 8, "prompt_tokens": 16, "requests_per_client": 2,
        "duration_s": None, "timeout_s": 600.0, "extra_body": None, "extra_share": 1.0,
    }  # fmt: skip
    reports = data["servers"]
    assert isinstance(reports, list)
    assert [s["name"] for s in reports] == servers
    for server in reports:
        assert [level["concurrency"] for level in server["levels"]] == [1, 2]
        for level in server["levels"]:
            assert set(level) == LEVEL_FIELDS
            assert level["errors"] == 0 and level["warmup_error"] is None, level
            assert level["completed"] == level["requests"] == 2 * level["concurrency"]
            assert level["throughput_tok_s"] > 0 and level["output_tokens"] > 0
            assert 0 < level["ttft_p50_s"] <= level["ttft_p99_s"] <= level["latency_p99_s"]
    assert (out / "bench.png").stat().st_size > 0


@pytest.mark.process
@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["", "/v1", "/v1/"])
def test_bench_a_running_server(tiny_server: RunningServer, tmp_path: Path, suffix: str) -> None:
    """The server's root or its OpenAI-style base URL: both reach /v1/chat/completions.
    Without a spec there is no engine to measure in-process: one line says so."""
    data, output = _run_bench(tmp_path, "--url", tiny_server.base_url + suffix)
    _check_report(data, tmp_path, ["server"])
    assert data["ratios"] == [] and data["fractions"] == [] and data["ceiling"] is None
    reason = data["ceiling_skipped"]
    assert isinstance(reason, str) and "--url" in reason and "--spec" in reason
    assert [line for line in output.splitlines() if "ceiling " in line] == [
        f"engine ceiling {reason}"
    ]
    assert "of engine" not in output


@pytest.mark.process
def test_a_server_that_fails_every_request_is_reported_not_a_crash(tmp_path: Path) -> None:
    """Every request answered 404 (no such route): the numbers and the plot are still written,
    and the run ends with one line naming what failed."""
    with _not_found_server() as url:
        common = ["--concurrency", "1,2", "--max-tokens", "4", "--requests-per-client", "1"]
        result = CliRunner().invoke(app, ["bench", "--url", url, *common, "--out", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "every request to server failed" in result.output and "http_404" in result.output
    assert "Traceback" not in result.output
    assert (tmp_path / "bench.json").exists() and (tmp_path / "bench.png").exists()


@contextlib.contextmanager
def _not_found_server() -> Iterator[str]:
    """A local HTTP server that answers 404 to everything (200 to /health, as a server would)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            ok = self.path == "/health"
            self.send_response(200 if ok else 404)
            body = b'{"status": "ok"}' if ok else b'{"error": {"message": "no such route"}}'
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


@pytest.mark.process
@pytest.mark.slow
def test_bench_starts_and_stops_mlxdeploy_from_a_spec(
    tiny_spec: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """The engine's in-process ceiling first (the default), then the server; mlxdeploy's share
    of the ceiling per level in the JSON and in the table."""
    data, output = _run_bench(tmp_path, "--spec", str(tiny_spec))
    _check_report(data, tmp_path, ["mlxdeploy"])
    _check_ceiling(data, output, tmp_path)
    servers = data["servers"]
    assert isinstance(servers, list)
    server = servers[0]
    assert Path(server["log"]) == tmp_path / "mlxdeploy.log"
    assert "serving tiny" in (tmp_path / "mlxdeploy.log").read_text()
    with pytest.raises(httpx.ConnectError):  # the bench stopped the server it started
        httpx.get(f"{server['url']}/health", timeout=5)


@pytest.mark.process
@pytest.mark.slow
def test_compare_with_mlx_lm_server_on_the_same_model(
    tiny_spec: Path, tiny_model_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    data = _bench(tmp_path, "--spec", str(tiny_spec), "--compare", "--no-ceiling")
    _check_report(data, tmp_path, ["mlxdeploy", "mlx_lm.server"])
    assert data["ceiling"] is None and data["ceiling_skipped"] == "not measured (--no-ceiling)"
    assert data["fractions"] == [] and not (tmp_path / "engine.log").exists()
    servers = data["servers"]
    assert isinstance(servers, list)
    assert str(tiny_model_dir) in servers[1]["command"]
    assert (tmp_path / "mlx_lm.server.log").exists()
    ratios = data["ratios"]
    assert isinstance(ratios, list)
    assert [r["concurrency"] for r in ratios] == [1, 2]
    assert all(r["throughput"] > 0 for r in ratios)


def _check_ceiling(data: dict[str, object], output: str, out: Path) -> None:
    ceiling = data["ceiling"]
    assert isinstance(ceiling, dict) and data["ceiling_skipped"] is None
    assert Path(ceiling["log"]) == out / "engine.log" and "mlxdeploy.bench.ceiling" in " ".join(
        ceiling["command"]
    )
    assert [level["concurrency"] for level in ceiling["levels"]] == [1, 2]
    for level in ceiling["levels"]:
        assert set(level) == LEVEL_FIELDS and level["errors"] == 0
        assert level["completed"] == level["requests"] == 2 * level["concurrency"]
        assert level["throughput_tok_s"] > 0
    assert [d["concurrency"] for d in ceiling["decode"]] == [1, 2]
    assert all(d["tok_s"] > 0 for d in ceiling["decode"])
    fractions = data["fractions"]
    assert isinstance(fractions, list) and [f["concurrency"] for f in fractions] == [1, 2]
    for share in fractions:
        assert share["of_engine"] > 0 and share["of_decode"] > 0 and share["engine_of_decode"] > 0
    assert "of engine, of decode" in output and "engine ceiling" not in output  # measured
    rows = [line.split() for line in output.splitlines()]
    ours = [row for row in rows if row[1:2] == ["mlxdeploy"]]
    assert len(ours) == 2 and all(row[-1].endswith("%") and row[-2].endswith("%") for row in ours)
    engine = [row for row in rows if row[1:2] == ["in-process"] and len(row) > 3]
    assert len(engine) == 2 and all(row[-1].endswith("%") for row in engine)
    decode = [row for row in rows if row[1:3] == ["decode", "only"]]
    assert len(decode) == 2 and all(float(row[3]) > 0 for row in decode)


# --------------------------------------------------------------------------- servers


@pytest.mark.process
def test_the_bench_lets_mlxdeploy_bind_its_own_port(tmp_path: Path) -> None:
    """No port is chosen ahead of `mlxdeploy up`: it binds port 0 and its ready line says."""
    spec = write_spec(tmp_path / "s.yaml", "owner/model")
    (target,) = planned_targets(build_options(LoadSettings((1,)), tmp_path, None, spec, False))
    assert target.name == "mlxdeploy" and target.url is None
    assert target.command is not None and target.command[-2:] == ["--port", "0"]


@pytest.mark.parametrize(
    "line",
    [
        "2026-01-01 12:00:00,000 INFO mlxdeploy.server: serving a, b on http://127.0.0.1:4321",
        json.dumps({"level": "INFO", "message": "serving a, b on http://127.0.0.1:4321"}),
    ],
)
def test_the_ready_line_names_the_url_in_text_and_json_logs(line: str) -> None:
    found = READY_LINE.search(f"BLAS: reference\n{line}\n")
    assert found is not None and found.group(1) == "http://127.0.0.1:4321"


@pytest.mark.process
def test_a_server_that_exits_before_it_is_ready_is_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "print('no such model', flush=True); raise SystemExit(3)"]
    with pytest.raises(
        BenchError, match=r"^fake exited with 3 before it was ready \(.*\): no such"
    ):
        with running("fake", command, tmp_path / "fake.log"):
            pytest.fail("a server that exited was reported ready")


def test_mlx_lm_server_gets_the_model_dir_of_a_gguf_spec(
    demo_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    deployment = load_spec(write_spec(tmp_path / "gguf.yaml", DEMO_MODEL))
    assert resolve_model_dir(deployment) == demo_dir


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_extra_fields_go_to_exactly_their_share_of_requests(share: float) -> None:
    from mlxdeploy.bench.load import takes_extra

    chosen = [takes_extra(i, share) for i in range(64)]
    assert sum(chosen) == 64 * share
    assert all(sum(chosen[i : i + 4]) == 4 * share for i in range(0, 64, 4))  # spread evenly


@pytest.mark.parametrize(("text", "words"), [("{nope", "not JSON"), ("[1]", "JSON object")])
def test_a_bad_extra_body_is_one_line(text: str, words: str) -> None:
    from mlxdeploy.bench import BenchError
    from mlxdeploy.bench.run import parse_extra_body

    with pytest.raises(BenchError, match=words):
        parse_extra_body(text)
    assert parse_extra_body('{"logprobs": true}') == {"logprobs": True}
