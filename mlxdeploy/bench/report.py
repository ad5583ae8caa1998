"""What a benchmark measured: each request's result, each level's statistics, the report
(settings, machine, servers, ratios), and the report as a table and as JSON."""

from __future__ import annotations

import json
import os
import platform
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

MLXDEPLOY = "mlxdeploy"
MLX_LM = "mlx_lm.server"
ENGINE = "in-process"  # the ceiling: the same load straight to the engine, no HTTP
DECODE_ONLY = "decode only"  # the ceiling's plain decoding at batch C, nobody arriving


@dataclass(frozen=True)
class LoadSettings:
    concurrency: tuple[int, ...]
    max_tokens: int = 64
    prompt_tokens: int = 128
    requests_per_client: int = 4
    duration_s: float | None = None  # when set, clients send requests until it has passed
    timeout_s: float = 600.0
    extra_body: dict[str, Any] | None = None  # fields added to a share of the requests
    extra_share: float = 1.0  # that share, 0-1, spread evenly over each client's requests


# --------------------------------------------------------------------------- statistics


@dataclass
class RequestResult:
    latency_s: float
    ttft_s: float | None = None
    output_tokens: int = 0
    error: str | None = None


@dataclass
class LevelStats:
    concurrency: int
    requests: int
    completed: int
    errors: int
    error_pct: float
    error_types: dict[str, int]
    short_completions: int  # completed with fewer than max_tokens tokens
    output_tokens: int
    wall_s: float
    throughput_tok_s: float
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    latency_p50_s: float | None
    latency_p99_s: float | None
    warmup_error: str | None = None
    draft_acceptance: float | None = None  # guesses kept over guessed (speculative decoding)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation, as numpy's default; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(
    concurrency: int, results: Sequence[RequestResult], wall_s: float, max_tokens: int
) -> LevelStats:
    ok = [r for r in results if r.error is None]
    errors = Counter(r.error for r in results if r.error is not None)
    tokens = sum(r.output_tokens for r in ok)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    latencies = [r.latency_s for r in ok]
    failed = len(results) - len(ok)
    return LevelStats(
        concurrency=concurrency,
        requests=len(results),
        completed=len(ok),
        errors=failed,
        error_pct=100.0 * failed / len(results) if results else 0.0,
        error_types=dict(sorted(errors.items())),
        short_completions=sum(1 for r in ok if r.output_tokens < max_tokens),
        output_tokens=tokens,
        wall_s=wall_s,
        throughput_tok_s=tokens / wall_s if wall_s > 0 else 0.0,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        latency_p50_s=percentile(latencies, 50),
        latency_p99_s=percentile(latencies, 99),
    )


# --------------------------------------------------------------------------- the report


@dataclass
class MachineInfo:
    cpu_count: int | None
    platform: str
    machine: str
    python: str
    mlx: str | None
    mlx_lm: str | None
    mlxdeploy: str | None
    blas: str | None = None  # only when a server's health or log names it


@dataclass
class ServerReport:
    name: str
    url: str
    command: list[str] | None = None
    log: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    health: object = None
    blas: str | None = None  # as the server's health or log names it
    levels: list[LevelStats] = field(default_factory=list)


@dataclass
class DecodeRate:
    """Plain decoding at batch `batch`: the engine's completion tokens over the window where
    the same `batch` requests (the bench's request, without --extra-body) all decoded."""

    concurrency: int
    batch: int  # the concurrency, capped by engine.max_batch_size
    tok_s: float | None  # None: no window was found (fewer than two polls inside one)
    window_s: float = 0.0
    window_tokens: int = 0
    window_steps: float = 0.0  # window_tokens / batch
    polls: int = 0


@dataclass
class CeilingReport:
    """The engine in-process (`python -m mlxdeploy.bench.ceiling`): the HTTP bench's load
    straight to an MLXEngine of the spec's first model, and decode only, per level."""

    command: list[str]
    log: str
    blas: str | None = None
    levels: list[LevelStats] = field(default_factory=list)
    decode: list[DecodeRate] = field(default_factory=list)


@dataclass
class Fraction:
    """Per level: mlxdeploy's tok/s over the engine's in-process closed loop, and over its
    decode-only rate; and the in-process closed loop's own share of decode only."""

    concurrency: int
    of_engine: float | None
    of_decode: float | None
    engine_of_decode: float | None


@dataclass
class Ratio:
    concurrency: int
    throughput: float | None
    ttft_p99: float | None


@dataclass
class BenchReport:
    command: str
    started_at: str
    machine: MachineInfo
    settings: LoadSettings
    servers: list[ServerReport] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)  # mlxdeploy / mlx_lm.server
    ceiling: CeilingReport | None = None
    ceiling_skipped: str | None = None  # why there is no ceiling
    fractions: list[Fraction] = field(default_factory=list)  # mlxdeploy / ceiling
    files: dict[str, str] = field(default_factory=dict)


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> MachineInfo:
    return MachineInfo(
        cpu_count=os.cpu_count(),
        platform=platform.platform(),
        machine=platform.machine(),
        python=platform.python_version(),
        mlx=package_version("mlx"),
        mlx_lm=package_version("mlx-lm"),
        mlxdeploy=package_version("mlxdeploy"),
    )


def blas_line(text: str) -> str | None:
    """What follows "BLAS" on the first line that names it, e.g. "openblas (/usr/lib/...)"."""
    match = re.search(r"\bBLAS\b[\s:=\"]*(.+)$", text, re.IGNORECASE | re.MULTILINE)
    return match.group(1).strip()[:200] if match else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compare_levels(ours: ServerReport, theirs: ServerReport) -> list[Ratio]:
    by_level = {s.concurrency: s for s in theirs.levels}
    return [
        Ratio(
            s.concurrency,
            ratio(s.throughput_tok_s, by_level[s.concurrency].throughput_tok_s),
            ratio(s.ttft_p99_s, by_level[s.concurrency].ttft_p99_s),
        )
        for s in ours.levels
        if s.concurrency in by_level
    ]


def ceiling_fractions(ours: ServerReport | None, ceiling: CeilingReport) -> list[Fraction]:
    http = {s.concurrency: s.throughput_tok_s for s in ours.levels} if ours else {}
    decode = {d.concurrency: d.tok_s for d in ceiling.decode}
    return [
        Fraction(
            s.concurrency,
            ratio(http.get(s.concurrency), s.throughput_tok_s),
            ratio(http.get(s.concurrency), decode.get(s.concurrency)),
            ratio(s.throughput_tok_s, decode.get(s.concurrency)),
        )
        for s in ceiling.levels
    ]


def read_ceiling(path: Path) -> tuple[list[LevelStats], list[DecodeRate]]:
    """The levels the ceiling wrote; ValueError, TypeError or KeyError if it is not that."""
    data = json.loads(path.read_text())
    levels = [LevelStats(**level) for level in data["levels"]]
    return levels, [DecodeRate(**decode) for decode in data["decode"]]


def write_json(report: BenchReport, path: Path) -> None:
    path.write_text(json.dumps(asdict(report), indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- the table


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


TABLE_COLUMNS = ("clients", "server", "tok/s", "TTFT\np50 ms", "TTFT\np99 ms", "lat.\np50 s",
                 "lat.\np99 s", "done", "err")  # fmt: skip


def render_table(report: BenchReport) -> Table:
    """Per concurrency, one row per server; the ratios mlxdeploy / mlx_lm.server on its row;
    with a ceiling, its two rows and mlxdeploy's shares of them."""
    title = f"{report.settings.max_tokens} tokens per request, closed-loop clients"
    table = Table(
        title=title, caption=_caption(report), box=box.SIMPLE_HEAD, pad_edge=False, padding=0
    )
    for name in TABLE_COLUMNS:
        text = name == "server"
        table.add_column(name, justify="left" if text else "right", no_wrap=text, min_width=4)
    if report.ratios:
        table.add_column("ratio\ntok/s", justify="right", min_width=5)
        table.add_column("ratio\nTTFT99", justify="right", min_width=5)
    if report.ceiling:
        table.add_column("of\nengine", justify="right", min_width=6)
        table.add_column("of\ndecode", justify="right", min_width=6)
    for level in report.settings.concurrency:
        for row in _rows(report, level):
            table.add_row(*row)
        table.add_section()
    return table


def draft_counts(metrics: str) -> tuple[float, float]:
    """(guessed, kept) draft tokens of every model on a /metrics page."""
    totals = {"mlxdeploy_draft_tokens_total": 0.0, "mlxdeploy_draft_tokens_accepted_total": 0.0}
    for line in metrics.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals["mlxdeploy_draft_tokens_total"], totals["mlxdeploy_draft_tokens_accepted_total"]


def acceptance(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """Kept over guessed between two readings of `draft_counts` (None: nothing guessed)."""
    guessed, kept = after[0] - before[0], after[1] - before[1]
    return kept / guessed if guessed > 0 else None


def _caption(report: BenchReport) -> str | None:
    lines = [f"ratio: {MLXDEPLOY} / {MLX_LM}"] if report.ratios else []
    for server in report.servers:
        rates = [(s.concurrency, s.draft_acceptance) for s in server.levels]
        shown = ", ".join(f"{c} clients {r:.2f}" for c, r in rates if r is not None)
        if shown:
            lines.append(f"{server.name} draft acceptance: {shown}")
    if report.ceiling:
        lines.append(f"of engine, of decode: tok/s / {ENGINE} tok/s, / {DECODE_ONLY} tok/s")
    return "\n".join(lines) or None


def _rows(report: BenchReport, level: int) -> list[list[str]]:
    ratios = {r.concurrency: r for r in report.ratios}
    fractions = {f.concurrency: f for f in report.fractions}
    rows = []
    for server in report.servers:
        stats = next((s for s in server.levels if s.concurrency == level), None)
        row = [str(level), server.name, *_level_cells(stats)]
        ours = server.name == MLXDEPLOY
        if report.ratios:
            found = ratios.get(level) if ours else None
            row += [_x(found.throughput), _x(found.ttft_p99)] if found else ["", ""]
        if report.ceiling:
            share = fractions.get(level) if ours else None
            row += [_pct(share.of_engine), _pct(share.of_decode)] if share else ["", ""]
        rows.append(row)
    if report.ceiling:
        rows += _ceiling_rows(report, report.ceiling, level, fractions.get(level))
    return rows


def _ceiling_rows(
    report: BenchReport, ceiling: CeilingReport, level: int, share: Fraction | None
) -> list[list[str]]:
    """The in-process closed loop (with its own share of decode only), and decode only."""
    pad = ["", ""] if report.ratios else []
    stats = next((s for s in ceiling.levels if s.concurrency == level), None)
    decode = next((d for d in ceiling.decode if d.concurrency == level), None)
    rate = "-" if decode is None or decode.tok_s is None else f"{decode.tok_s:.1f}"
    own = _pct(share.engine_of_decode) if share else ""
    blank = ["-"] * (len(TABLE_COLUMNS) - 3)
    return [
        [str(level), ENGINE, *_level_cells(stats), *pad, "", own],
        [str(level), DECODE_ONLY, rate, *blank, *pad, "", ""],
    ]


def _level_cells(stats: LevelStats | None) -> list[str]:
    if stats is None:
        return ["-"] * (len(TABLE_COLUMNS) - 2)
    errors = f"{stats.errors} ({stats.error_pct:.0f}%)" if stats.errors else "0"
    return [
        f"{stats.throughput_tok_s:.1f}",
        _ms(stats.ttft_p50_s),
        _ms(stats.ttft_p99_s),
        _s(stats.latency_p50_s),
        _s(stats.latency_p99_s),
        str(stats.completed),
        errors,
    ]
