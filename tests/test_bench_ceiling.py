"""The engine's in-process ceiling (`python -m mlxdeploy.bench.ceiling`): its requests are the
ones the server would run, it measures real inference on the tiny model, and the bench shows
mlxdeploy's share of it or one line why there is none. Nothing here asserts a speed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from mlxdeploy.bench.ceiling import Bench, send
from mlxdeploy.bench.load import chat_body, make_prompt
from mlxdeploy.bench.report import (
    BenchReport,
    CeilingReport,
    DecodeRate,
    LoadSettings,
    ServerReport,
    ceiling_fractions,
    machine_info,
    read_ceiling,
    render_table,
    summarize,
)
from mlxdeploy.bench.run import build_options, measure_ceiling
from mlxdeploy.cli import app
from mlxdeploy.spec import load_spec
from tests.conftest import scripted_app, write_spec
from tests.scripted import ScriptedEngine

LOAD = LoadSettings((1, 2), max_tokens=8, prompt_tokens=16, requests_per_client=2)


def _ceiling(
    spec: Path, load: LoadSettings, out: Path
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out_file = out / "engine.json"
    command = [sys.executable, "-m", "mlxdeploy.bench.ceiling", str(spec),
               "--load", json.dumps(asdict(load)), "--out", str(out_file)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=600), out_file


# --------------------------------------------------------------------------- real runs


@pytest.mark.process
def test_the_ceiling_measures_the_closed_loop_and_decode_only(
    tiny_spec: Path, cache_dir: Path, tmp_path: Path
) -> None:
    done, out_file = _ceiling(tiny_spec, LOAD, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    levels, decode = read_ceiling(out_file)
    assert [s.concurrency for s in levels] == [1, 2]
    for stats in levels:
        assert stats.completed == stats.requests == 2 * stats.concurrency, stats
        assert stats.errors == 0 and stats.warmup_error is None
        assert stats.short_completions == 0 and stats.output_tokens == 8 * stats.completed
        assert stats.ttft_p50_s is not None and stats.latency_p99_s is not None
        assert 0 < stats.ttft_p50_s <= stats.latency_p99_s
        assert stats.throughput_tok_s > 0
    assert [(d.concurrency, d.batch) for d in decode] == [(1, 1), (2, 2)]
    for rate in decode:
        assert rate.tok_s is not None and rate.tok_s > 0, rate
        assert rate.window_steps >= 4 and rate.polls >= 2 and rate.window_s > 0
        assert rate.window_tokens == rate.window_steps * rate.batch
    lines = [line for line in done.stdout.splitlines() if line.startswith("ceiling: ")]
    assert [line.split()[1] for line in lines] == ["1", "2"]  # one line per level, in order
    assert "BLAS:" in done.stderr


@pytest.mark.process
def test_the_ceiling_gives_the_extra_fields_to_their_share(
    tiny_spec: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """--extra-body reaches the in-process requests as it reaches the HTTP ones: here half of
    them ask for 3 tokens instead of 8."""
    load = LoadSettings((2,), max_tokens=8, prompt_tokens=16, requests_per_client=2,
                        extra_body={"max_tokens": 3}, extra_share=0.5)  # fmt: skip
    done, out_file = _ceiling(tiny_spec, load, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    (stats,), _ = read_ceiling(out_file)
    assert (stats.completed, stats.short_completions) == (4, 2)
    assert stats.output_tokens == 2 * 8 + 2 * 3


@pytest.mark.process
def test_a_ceiling_that_cannot_load_its_model_ends_with_one_line(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", tmp_path / "no-model-here")
    done, out_file = _ceiling(spec, LOAD, tmp_path)
    assert done.returncode == 1 and not out_file.exists()
    (last,) = done.stdout.strip().splitlines()
    assert last.startswith("ceiling failed: ") and "no-model-here" in last
    assert "Traceback" not in done.stdout + done.stderr


# --------------------------------------------------------------------------- the same requests


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"logprobs": True, "top_logprobs": 2, "seed": 7, "stop": ["zz"]},
        {"temperature": -1},  # the wire model refuses it
        {"max_tokens": 100_000},  # above limits.max_tokens
        {"top_logprobs": 2},  # the API's own rule: needs logprobs
    ],
)
def test_the_ceiling_runs_what_the_server_would_run(tmp_path: Path, extra: dict[str, Any]) -> None:
    """The bench's request through HTTP and through the ceiling's `send`: the same turns and
    sampling params reach the engine (the spec's defaults and stop words applied by the API's
    rules), or both refuse it with 400."""
    defaults = {"max_tokens": 16, "top_p": 0.9, "repetition_penalty": 1.1}
    spec_path = write_spec(tmp_path / "s.yaml", "owner/model", name="tiny", stop=["END"],
                           defaults=defaults)  # fmt: skip
    body = {**chat_body(make_prompt(16, "1-0-0"), 4), **extra}
    served_engine, direct_engine = ScriptedEngine(), ScriptedEngine()
    with scripted_app(spec_path, served_engine) as served:
        response = served.http.post("/v1/chat/completions", json=body)
    bench = Bench(direct_engine, load_spec(spec_path), LOAD)
    result = asyncio.run(send(bench, body))
    if response.status_code == 400:
        assert result.error == "http_400" and direct_engine.params == []
        return
    assert response.status_code == 200 and result.error is None
    assert direct_engine.turns == served_engine.turns and len(direct_engine.turns) == 1
    assert direct_engine.params == served_engine.params and len(direct_engine.params) == 1
    assert direct_engine.params[0].stop[-1] == "END" and direct_engine.params[0].top_p == 0.9
    assert result.output_tokens == 4 and result.ttft_s is not None


# --------------------------------------------------------------------------- the report


def _report(ceiling: CeilingReport | None) -> BenchReport:
    report = BenchReport("bench", "now", machine_info(), LoadSettings((1, 8)), ceiling=ceiling)
    ours = ServerReport("mlxdeploy", "u", levels=[summarize(c, [], 1.0, 1) for c in (1, 8)])
    ours.levels[0].throughput_tok_s, ours.levels[1].throughput_tok_s = 40.0, 300.0
    report.servers.append(ours)
    if ceiling is not None:
        report.fractions = ceiling_fractions(ours, ceiling)
    return report


def _ceiling_report() -> CeilingReport:
    levels = [summarize(c, [], 1.0, 1) for c in (1, 8)]
    levels[0].throughput_tok_s, levels[1].throughput_tok_s = 50.0, 400.0
    decode = [DecodeRate(1, 1, 80.0), DecodeRate(8, 8, None)]  # no window at 8
    return CeilingReport(["python"], "engine.log", levels=levels, decode=decode)


def test_fractions_are_mlxdeploy_over_the_ceiling_per_level() -> None:
    first, second = _report(_ceiling_report()).fractions
    assert (first.concurrency, second.concurrency) == (1, 8)
    assert first.of_engine == pytest.approx(0.8) and first.of_decode == pytest.approx(0.5)
    assert first.engine_of_decode == pytest.approx(50 / 80)
    assert second.of_engine == pytest.approx(0.75)
    assert second.of_decode is None and second.engine_of_decode is None


def _table_rows(report: BenchReport) -> list[list[str]]:
    console = Console(record=True, width=120)
    console.print(render_table(report))
    return [line.split() for line in console.export_text().splitlines()]


def test_the_table_shows_the_ceiling_rows_and_mlxdeploys_shares() -> None:
    rows = _table_rows(_report(_ceiling_report()))
    ours = [row for row in rows if row[1:2] == ["mlxdeploy"]]
    assert [row[:3] for row in ours] == [["1", "mlxdeploy", "40.0"], ["8", "mlxdeploy", "300.0"]]
    assert [row[-2:] for row in ours] == [["80%", "50%"], ["75%", "-"]]
    engine = [row for row in rows if row[1:2] == ["in-process"]]
    assert [(row[2], row[-1]) for row in engine] == [("50.0", "62%"), ("400.0", "-")]
    decode = [row for row in rows if row[1:3] == ["decode", "only"]]
    assert [row[3] for row in decode] == ["80.0", "-"]


def test_without_a_ceiling_the_table_has_no_share_columns() -> None:
    rows = _table_rows(_report(None))
    assert not any("engine" in row or "in-process" in row for row in rows)
    ours = [row for row in rows if row[1:2] == ["mlxdeploy"]]
    assert [row[-1] for row in ours] == ["0", "0"]  # ends with its error count


# --------------------------------------------------------------------------- failures


def _options(tmp_path: Path, **load: Any) -> Any:
    spec = write_spec(tmp_path / "s.yaml", "owner/model")
    return build_options(LoadSettings((1,), **load), tmp_path / "out", None, spec, False)


@pytest.mark.process
@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("print('ceiling failed: out of memory'); raise SystemExit(1)", "exited with 1"),
        ("print('done')", "cannot read"),  # exits 0 without writing its results
    ],
)
def test_a_failed_ceiling_is_one_reason_not_an_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str, words: str
) -> None:
    monkeypatch.setattr(
        "mlxdeploy.bench.run.ceiling_command", lambda *args: [sys.executable, "-c", code]
    )
    options = _options(tmp_path)
    options.out.mkdir()
    with Progress(disable=True) as progress:
        found, reason = measure_ceiling(options, progress)
    assert found is None and reason is not None
    assert reason.startswith("not measured: ") and words in reason and "\n" not in reason
    if "exited" in words:
        assert reason.endswith("ceiling failed: out of memory")


def test_no_ceiling_when_asked_or_when_extra_fields_pick_another_model(tmp_path: Path) -> None:
    from dataclasses import replace

    options = _options(tmp_path, extra_body={"model": "other"})
    with Progress(disable=True) as progress:
        assert measure_ceiling(options, progress) == (
            None,
            "not measured: --extra-body sets model; the ceiling runs the spec's first model",
        )
        skipped = measure_ceiling(replace(options, ceiling=False), progress)
    assert skipped == (None, "not measured (--no-ceiling)")


@pytest.mark.process
@pytest.mark.slow
def test_a_failed_ceiling_does_not_stop_the_http_bench(
    tiny_spec: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = [sys.executable, "-c", "print('ceiling failed: boom'); raise SystemExit(1)"]
    monkeypatch.setattr("mlxdeploy.bench.run.ceiling_command", lambda *args: failing)
    args = ["bench", "--spec", str(tiny_spec), "--concurrency", "1", "--max-tokens", "4",
            "--requests-per-client", "1", "--out", str(tmp_path)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if "ceiling failed" in line]
    assert line.startswith("engine ceiling not measured: ") and line.endswith("boom")
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["ceiling"] is None and data["fractions"] == [] and "boom" in data["ceiling_skipped"]
    (server,) = data["servers"]
    assert server["name"] == "mlxdeploy" and server["levels"][0]["completed"] == 1


@pytest.mark.process
@pytest.mark.parametrize("module", ["mlxdeploy.bench.run", "mlxdeploy.bench.ceiling"])
def test_mlx_is_not_imported_by_the_bench_nor_before_the_ceiling_loads_its_blas(
    module: str,
) -> None:
    """The bench process never imports MLX; the ceiling imports it only after loading the
    fast BLAS (which must come first), so importing either module leaves MLX out."""
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('mlx.')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
