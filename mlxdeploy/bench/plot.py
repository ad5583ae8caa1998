"""The benchmark's PNG: throughput and TTFT against concurrency, one line per server.

matplotlib is optional (`pip install 'mlxdeploy[bench]'`); callers import this module lazily
and treat ImportError as "no plot". Uses Figure directly, not pyplot, so no global state.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

from .report import DECODE_ONLY, ENGINE, BenchReport, CeilingReport, LevelStats, ServerReport

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
CEILING_COLOR = "tab:gray"


def plot_report(report: BenchReport, path: Path) -> None:
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    throughput, ttft = figure.subplots(1, 2)
    for server, color in zip(report.servers, COLORS, strict=False):
        plot_server(throughput, ttft, server, color)
    if report.ceiling is not None:
        plot_ceiling(throughput, ttft, report.ceiling)
    levels = list(report.settings.concurrency)
    style_axes(throughput, levels, "output tokens/s (all clients)", "Throughput")
    style_axes(ttft, levels, "time to first token (s)", "TTFT p50 (solid) / p99 (dashed)")
    ceiling = report.ceiling.levels if report.ceiling else []
    timed = [*ceiling, *(level for server in report.servers for level in server.levels)]
    if any(s.ttft_p50_s for s in timed):
        ttft.set_yscale("log")  # only with some positive value: nothing to scale otherwise
        ttft.yaxis.set_major_formatter(ScalarFormatter())
        ttft.yaxis.set_minor_formatter(NullFormatter())
    else:
        ttft.text(0.5, 0.5, "no request succeeded", ha="center", transform=ttft.transAxes)
    machine = report.machine
    figure.suptitle(
        f"{report.settings.max_tokens} tokens/request, ~{report.settings.prompt_tokens}-word "
        f"prompts, {machine.cpu_count} CPUs, {machine.platform}, mlx {machine.mlx}, "
        f"mlx-lm {machine.mlx_lm}",
        fontsize=9,
    )
    figure.savefig(path, dpi=120)


def plot_server(throughput: Axes, ttft: Axes, server: ServerReport, color: str) -> None:
    levels = server.levels
    xs = [s.concurrency for s in levels]
    throughput.plot(xs, [s.throughput_tok_s for s in levels], "o-", color=color, label=server.name)
    p50 = _points(levels, "ttft_p50_s")
    p99 = _points(levels, "ttft_p99_s")
    ttft.plot(*p50, "o-", color=color, label=f"{server.name} p50")
    ttft.plot(*p99, "s--", color=color, label=f"{server.name} p99")


def plot_ceiling(throughput: Axes, ttft: Axes, ceiling: CeilingReport) -> None:
    """The engine in-process like a server, and its decode-only rate as a dotted line."""
    plot_server(throughput, ttft, ServerReport(ENGINE, "", levels=ceiling.levels), CEILING_COLOR)
    rates = [(d.concurrency, d.tok_s) for d in ceiling.decode if d.tok_s is not None]
    xs, ys = [x for x, _ in rates], [y for _, y in rates]
    throughput.plot(xs, ys, "^:", color=CEILING_COLOR, label=DECODE_ONLY)


def _points(levels: list[LevelStats], name: str) -> tuple[list[int], list[float]]:
    pairs = [(s.concurrency, getattr(s, name)) for s in levels if getattr(s, name) is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def style_axes(axes: Axes, levels: list[int], ylabel: str, title: str) -> None:
    axes.set_xscale("log", base=2)
    axes.xaxis.set_major_locator(FixedLocator(levels))
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xlabel("concurrent clients")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
