"""`mlxdeploy bench`: check the flags, bench each server in turn, write JSON, PNG and a table.

Servers are benchmarked one at a time (never two at once), mlxdeploy beside mlx_lm.server
with `--compare`. With `--spec`, the engine's in-process ceiling (ceiling.py, in a child
process) is measured first, so the table shows what share of it the HTTP path reaches.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from ..spec import Deployment, load_spec
from . import BenchError
from .load import run_level
from .report import (
    ENGINE,
    MLX_LM,
    MLXDEPLOY,
    BenchReport,
    CeilingReport,
    LoadSettings,
    RequestResult,
    ServerReport,
    acceptance,
    blas_line,
    ceiling_fractions,
    compare_levels,
    draft_counts,
    machine_info,
    read_ceiling,
    render_table,
    write_json,
)
from .servers import (
    LOCALHOST,
    POLL_S,
    fetch_health,
    free_port,
    launch,
    mlx_lm_command,
    mlxdeploy_command,
    resolve_model_dir,
    running,
    sigterm_as_exit,
    stop_process,
)

CEILING_LEVEL_LINE = re.compile(r"^ceiling: \d+ clients", re.MULTILINE)  # one per level done


@dataclass(frozen=True)
class BenchOptions:
    load: LoadSettings
    out: Path
    url: str | None = None
    spec_path: Path | None = None
    deployment: Deployment | None = None
    compare: bool = False
    same_blas: bool = True
    ceiling: bool = True  # with a spec: measure the engine in-process first
    command: str = ""


@dataclass(frozen=True)
class Target:
    """A server to benchmark: started from `command`, or already running at `url`.

    A started server without `url` is `mlxdeploy up --port 0`: its ready line gives the URL."""

    name: str
    url: str | None
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to the bench's environment


def parse_concurrency(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        levels = ()
    if not levels or min(levels) < 1:
        raise BenchError(f"--concurrency: expected positive integers like 1,8,32, got {text!r}")
    return levels


def server_root(url: str) -> str:
    """The server's root: an OpenAI-style base URL (`http://host:port/v1`) is accepted too."""
    return url.rstrip("/").removesuffix("/v1").rstrip("/")


def parse_extra_body(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        fields = json.loads(text)
    except ValueError as exc:
        raise BenchError(f"--extra-body: not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise BenchError("--extra-body: expected a JSON object of request fields")
    return fields


def build_options(
    load: LoadSettings,
    out: Path | None,
    url: str | None,
    spec_path: Path | None,
    compare: bool,
    same_blas: bool = True,
    ceiling: bool = True,
) -> BenchOptions:
    """Check the combination of flags; load the spec (raises SpecError on a bad one)."""
    if (url is None) == (spec_path is None):
        raise BenchError("give either --url of a running server or --spec to start one")
    if compare and spec_path is None:
        raise BenchError("--compare needs --spec: mlx_lm.server is started on the spec's model")
    if load.max_tokens < 1 or load.prompt_tokens < 1 or load.requests_per_client < 1:
        raise BenchError("--max-tokens, --prompt-tokens and --requests-per-client must be >= 1")
    if load.duration_s is not None and load.duration_s <= 0:
        raise BenchError(f"--duration must be > 0 seconds, got {load.duration_s}")
    if not 0 <= load.extra_share <= 1:
        raise BenchError(f"--extra-share must be between 0 and 1, got {load.extra_share}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return BenchOptions(
        load=load,
        out=out or Path(f"bench-{stamp}"),
        url=server_root(url) if url else None,
        spec_path=spec_path,
        deployment=load_spec(spec_path) if spec_path else None,
        compare=compare,
        same_blas=same_blas,
        ceiling=ceiling,
        command=shlex.join(sys.argv),
    )


def planned_targets(options: BenchOptions) -> list[Target]:
    if options.deployment is None or options.spec_path is None:
        assert options.url is not None
        return [Target("server", options.url)]
    up = mlxdeploy_command("up", str(options.spec_path), "--host", LOCALHOST, "--port", "0")
    targets = [Target(MLXDEPLOY, None, up)]
    if options.compare:
        model_dir = resolve_model_dir(options.deployment)
        port = free_port()
        engine = options.deployment.catalog.models[0].engine
        command = mlx_lm_command(model_dir, engine, options.load, port)
        targets.append(Target(MLX_LM, f"http://{LOCALHOST}:{port}", command))
    return targets


def same_blas(target: Target, servers: list[ServerReport]) -> Target:
    """mlx_lm.server with the BLAS library mlxdeploy loaded (LD_PRELOAD has the same effect),
    so the comparison measures the servers rather than the BLAS."""
    loaded = next((s.blas for s in servers if s.name == MLXDEPLOY and s.blas), None)
    library = re.search(r"\((/[^)]+)\)", loaded) if loaded else None
    if library is None:
        return target
    preload = " ".join(filter(None, (library.group(1), os.environ.get("LD_PRELOAD"))))
    return replace(target, env={**target.env, "LD_PRELOAD": preload})


def bench_server(report: ServerReport, load: LoadSettings, progress: Progress) -> None:
    for level in load.concurrency:
        total = None if load.duration_s else level * load.requests_per_client
        task = progress.add_task(f"{report.name} c={level}", total=total)

        def done(result: RequestResult, task: TaskID = task) -> None:
            progress.advance(task)

        before = _draft_counts(report.url)
        stats = asyncio.run(run_level(report.url, level, load, done))
        after = _draft_counts(report.url)
        if before is not None and after is not None:
            stats.draft_acceptance = acceptance(before, after)
        progress.update(task, total=stats.requests, completed=stats.requests)
        report.levels.append(stats)


def _draft_counts(url: str) -> tuple[float, float] | None:
    """The server's draft tokens so far (None: no mlxdeploy metrics there)."""
    try:
        response = httpx.get(f"{server_root(url)}/metrics", timeout=5)
    except httpx.HTTPError:
        return None
    return draft_counts(response.text) if response.status_code == 200 else None


def run_target(target: Target, options: BenchOptions, progress: Progress) -> ServerReport:
    if target.command is None:
        assert target.url is not None
        report = ServerReport(target.name, target.url, health=fetch_health(target.url))
        bench_server(report, options.load, progress)
        return report
    log_path = options.out / f"{target.name}.log"
    with running(target.name, target.command, log_path, target.url, target.env) as (server, url):
        report = ServerReport(target.name, url, target.command, str(log_path), target.env)
        report.health = fetch_health(url)
        bench_server(report, options.load, progress)
    report.blas = blas_line(json.dumps(report.health)) or blas_line(server.log())
    return report


def ceiling_command(spec_path: Path, load: LoadSettings, out_file: Path) -> list[str]:
    return [sys.executable, "-m", "mlxdeploy.bench.ceiling", str(spec_path),
            "--load", json.dumps(asdict(load)), "--out", str(out_file)]  # fmt: skip


def ceiling_skip_reason(options: BenchOptions) -> str | None:
    if options.spec_path is None:
        return "not measured: --url benchmarks a running server; the ceiling needs --spec"
    if not options.ceiling:
        return "not measured (--no-ceiling)"
    if options.load.extra_body and "model" in options.load.extra_body:
        return "not measured: --extra-body sets model; the ceiling runs the spec's first model"
    return None


def measure_ceiling(
    options: BenchOptions, progress: Progress
) -> tuple[CeilingReport | None, str | None]:
    """The ceiling, or why there is none: a failed run is one line and the bench goes on."""
    reason = ceiling_skip_reason(options)
    if reason is not None:
        return None, reason
    task = progress.add_task(ENGINE, total=len(options.load.concurrency))
    try:
        return run_ceiling(options, lambda done: progress.update(task, completed=done)), None
    except BenchError as exc:
        progress.remove_task(task)
        return None, f"not measured: {exc}"


def run_ceiling(options: BenchOptions, levels_done: Callable[[int], None]) -> CeilingReport:
    """`python -m mlxdeploy.bench.ceiling` to its end (it loads the model, so it ends before
    any server starts); `levels_done` from the line it logs per level."""
    assert options.spec_path is not None
    out_file, log_path = options.out / "engine.json", options.out / "engine.log"
    out_file.unlink(missing_ok=True)  # a file left by an earlier run is not this run's result
    command = ceiling_command(options.spec_path, options.load, out_file)
    child = launch(ENGINE, command, log_path)
    try:
        while child.process.poll() is None:
            levels_done(len(CEILING_LEVEL_LINE.findall(child.log())))
            time.sleep(POLL_S)
    finally:
        code = stop_process(child.process)
    if code != 0:
        raise BenchError(f"the in-process run exited with {code} ({log_path}): {child.last_line()}")
    levels_done(len(options.load.concurrency))
    try:
        levels, decode = read_ceiling(out_file)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise BenchError(f"cannot read {out_file}: {exc}") from None
    return CeilingReport(command, str(log_path), blas_line(child.log()), levels, decode)


def run_bench(options: BenchOptions, console: Console) -> BenchReport:
    """Benchmark each server in turn (never two at once), then write JSON, PNG and a table."""
    options.out.mkdir(parents=True, exist_ok=True)
    report = BenchReport(
        command=options.command,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=machine_info(),
        settings=options.load,
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with sigterm_as_exit(), Progress(*columns, console=console) as progress:
        report.ceiling, report.ceiling_skipped = measure_ceiling(options, progress)
        if report.ceiling_skipped:
            progress.console.print(f"engine ceiling {report.ceiling_skipped}", soft_wrap=True)
        for target in planned_targets(options):
            if target.name == MLX_LM and options.same_blas:
                target = same_blas(target, report.servers)
            report.servers.append(run_target(target, options, progress))
    finish_report(report, options.out, console)
    for server in report.servers:
        failed = [level for level in server.levels if level.requests and not level.completed]
        if failed:
            kinds = ", ".join(sorted({kind for lv in failed for kind in lv.error_types}))
            raise BenchError(
                f"every request to {server.name} failed at {failed[0].concurrency} clients "
                f"({kinds or 'no answer'}); results in {options.out}"
            )
    return report


def finish_report(report: BenchReport, out: Path, console: Console) -> None:
    names = {s.name: s for s in report.servers}
    if MLXDEPLOY in names and MLX_LM in names:
        report.ratios = compare_levels(names[MLXDEPLOY], names[MLX_LM])
    if report.ceiling:
        report.fractions = ceiling_fractions(names.get(MLXDEPLOY), report.ceiling)
    ceiling_blas = report.ceiling.blas if report.ceiling else None
    report.machine.blas = next((s.blas for s in report.servers if s.blas), ceiling_blas)
    report.files["json"] = str(out / "bench.json")
    write_json(report, out / "bench.json")  # first: the numbers are kept whatever follows
    try:
        from .plot import plot_report

        plot_report(report, out / "bench.png")
        report.files["png"] = str(out / "bench.png")
    except ImportError:
        console.print("plot skipped: matplotlib is missing (pip install 'mlxdeploy[bench]')")
    write_json(report, out / "bench.json")
    console.print(render_table(report))
    console.print("  ".join(f"{kind}: {path}" for kind, path in report.files.items()))
