"""Closed-loop load test of OpenAI-compatible chat servers, mlxdeploy beside mlx_lm.server.

Each of C clients sends a streaming chat completion, reads it to the end and sends the next,
so the server always holds C requests. This module is an HTTP client and never imports mlx:
the servers it benchmarks run in their own processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType

import httpx
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ..spec.load import Spec, load_spec

MLXDEPLOY = "mlxdeploy"
MLX_LM = "mlx_lm.server"
LOAD_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 30.0
ERROR_PAUSE_S = 0.1  # after a failed request, so a dead server does not become a busy loop
WARMUP_TOKENS = 8
# Common words that are one token each (with their leading space) in most BPE vocabularies.
WORDS = (
    "the of and to in is was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each "
    "she which do their time if will way about many then them write would like so these her "
    "long make thing see him two has look more day could go come did number sound no most "
    "people my over know water than call first who may down side been now find any new work"
).split()


class BenchError(Exception):
    """The benchmark cannot run; the message is one actionable line."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class LoadSettings:
    concurrency: tuple[int, ...]
    max_tokens: int = 64
    prompt_tokens: int = 128
    requests_per_client: int = 4
    duration_s: float | None = None  # when set, clients send requests until it has passed
    timeout_s: float = 600.0


@dataclass(frozen=True)
class BenchOptions:
    load: LoadSettings
    out: Path
    url: str | None = None
    spec_path: Path | None = None
    spec: Spec | None = None
    compare: bool = False
    same_blas: bool = True
    command: str = ""


def parse_concurrency(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        levels = ()
    if not levels or min(levels) < 1:
        raise BenchError(f"--concurrency: expected positive integers like 1,8,32, got {text!r}")
    return levels


def build_options(
    load: LoadSettings,
    out: Path | None,
    url: str | None,
    spec_path: Path | None,
    compare: bool,
    same_blas: bool = True,
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
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return BenchOptions(
        load=load,
        out=out or Path(f"bench-{stamp}"),
        url=url.rstrip("/") if url else None,
        spec_path=spec_path,
        spec=load_spec(spec_path) if spec_path else None,
        compare=compare,
        same_blas=same_blas,
        command=shlex.join(sys.argv),
    )


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


# --------------------------------------------------------------------------- one request


def make_prompt(words: int, seed: str) -> str:
    """About `words` tokens of random common words; the same seed gives the same prompt."""
    rng = random.Random(seed)
    text = " ".join(rng.choice(WORDS) for _ in range(max(words, 1)))
    return f"Continue this text: {text}"


def chat_body(prompt: str, max_tokens: int) -> dict[str, object]:
    # No "model": both servers then use the model they serve.
    return {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def error_name(exc: BaseException) -> str:
    """ReadTimeout -> read_timeout, RemoteProtocolError -> remote_protocol_error."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


async def send_chat(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> RequestResult:
    start = time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                error = f"http_{response.status_code}"
                return RequestResult(time.perf_counter() - start, error=error)
            return await read_stream(response.aiter_lines(), start)
    except (httpx.HTTPError, OSError) as exc:
        return RequestResult(time.perf_counter() - start, error=error_name(exc))


async def read_stream(lines: AsyncIterator[str], start: float) -> RequestResult:
    """Read SSE lines to `data: [DONE]`; tokens from the usage chunk, else one per content delta."""
    ttft: float | None = None
    deltas = 0
    usage: int | None = None
    async for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators and SSE comments
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return RequestResult(time.perf_counter() - start, ttft, usage if usage else deltas)
        try:
            chunk = json.loads(data)
            if "error" in chunk:
                return RequestResult(time.perf_counter() - start, error="stream_error_event")
            contents = [c["delta"].get("content") for c in chunk.get("choices") or []]
            usage = chunk["usage"]["completion_tokens"] if chunk.get("usage") else usage
        except (ValueError, TypeError, KeyError, AttributeError):
            return RequestResult(time.perf_counter() - start, error="malformed_stream")
        if any(contents):
            deltas += sum(1 for c in contents if c)
            ttft = ttft if ttft is not None else time.perf_counter() - start
    return RequestResult(time.perf_counter() - start, error="incomplete_stream")


# --------------------------------------------------------------------------- one level


async def run_client(
    client: httpx.AsyncClient,
    url: str,
    index: int,
    load: LoadSettings,
    level: int,
    on_done: Callable[[RequestResult], None],
) -> list[RequestResult]:
    results: list[RequestResult] = []
    deadline = time.perf_counter() + load.duration_s if load.duration_s else None
    while _wants_more(len(results), load, deadline):
        prompt = make_prompt(load.prompt_tokens, f"{level}-{index}-{len(results)}")
        result = await send_chat(client, url, chat_body(prompt, load.max_tokens))
        results.append(result)
        on_done(result)
        if result.error is not None:
            await asyncio.sleep(ERROR_PAUSE_S)
    return results


def _wants_more(sent: int, load: LoadSettings, deadline: float | None) -> bool:
    if deadline is None:
        return sent < load.requests_per_client
    return time.perf_counter() < deadline


async def run_level(
    url: str, level: int, load: LoadSettings, on_done: Callable[[RequestResult], None]
) -> LevelStats:
    """Warm up with `level` concurrent short requests (so both servers meet every batch shape
    before they are timed: MLX compiles kernels per shape on first use), then run `level`
    closed-loop clients."""
    limits = httpx.Limits(max_connections=level + 1, max_keepalive_connections=level + 1)
    timeout = httpx.Timeout(load.timeout_s, connect=60.0, pool=None)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        warmups = await asyncio.gather(
            *(
                send_chat(
                    client, url, chat_body(make_prompt(load.prompt_tokens, f"w{i}"), WARMUP_TOKENS)
                )
                for i in range(level)
            )
        )
        start = time.perf_counter()
        per_client = await asyncio.gather(
            *(run_client(client, url, i, load, level, on_done) for i in range(level))
        )
        wall_s = time.perf_counter() - start
    stats = summarize(level, [r for rs in per_client for r in rs], wall_s, load.max_tokens)
    stats.warmup_error = next((w.error for w in warmups if w.error), None)
    return stats


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mlxdeploy_command(spec_path: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "mlxdeploy", "up", str(spec_path), "--host", "127.0.0.1",
            "--port", str(port)]  # fmt: skip


def mlx_lm_command(model_dir: Path, spec: Spec, load: LoadSettings, port: int) -> list[str]:
    """mlx_lm.server with the spec's batch sizes and prefill step (its defaults are 32, 8, 2048)."""
    engine = spec.engine
    return [
        sys.executable, "-m", "mlx_lm", "server", "--model", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port),
        "--temp", "0", "--max-tokens", str(load.max_tokens),
        "--decode-concurrency", str(engine.max_batch_size),
        "--prompt-concurrency", str(engine.prefill_batch_size),
        "--prefill-step-size", str(engine.prefill_step_size),
    ]  # fmt: skip


def resolve_model_dir(spec: Spec) -> Path:
    """The spec's (first) model as a local dir; GGUF and HF sources are resolved by a child
    process, because resolving them imports mlx."""
    model = spec.catalog.models[0]  # requests without `model` go to it on both servers
    if model.source.kind == "dir" and model.source.path is not None:
        return model.source.path
    code = "\n".join([
        "import sys",
        "from pathlib import Path",
        "from mlxdeploy.engine.loader import default_cache_root, resolve_model_dir",
        "from mlxdeploy.sources import parse_model_source",
        "source = parse_model_source(sys.argv[1], Path.cwd())",
        "print(resolve_model_dir(source, default_cache_root()))",
    ])  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", code, str(model.source)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise BenchError(f"cannot resolve the model dir of {model.model!r}: {done.stderr.strip()}")
    return Path(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def launched(target: Target, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait for /health, and always stop it (SIGTERM, then SIGKILL)."""
    assert target.command is not None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        # Own session: Ctrl-C reaches the bench only, which then stops the server itself.
        process = subprocess.Popen(
            target.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **target.env},
            start_new_session=True,
        )
    try:
        wait_healthy(target, process, log_path, LOAD_TIMEOUT_S)
        yield process
    finally:
        stop_process(process)


def wait_healthy(
    target: Target, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            raise BenchError(
                f"{target.name} exited with {process.returncode} before it was ready "
                f"({log_path}): {tail[0] if tail else 'no output'}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{target.url}/health", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise BenchError(f"{target.name} not healthy after {timeout_s:.0f}s; see {log_path}")


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so `finally` blocks stop the servers."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- report


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


def fetch_health(url: str) -> object:
    try:
        response = httpx.get(f"{url}/health", timeout=5)
        return response.json()
    except (httpx.HTTPError, ValueError):
        return None


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


def write_json(report: BenchReport, path: Path) -> None:
    path.write_text(json.dumps(asdict(report), indent=2, default=str) + "\n")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


TABLE_COLUMNS = ("clients", "server", "tok/s", "TTFT\np50 ms", "TTFT\np99 ms", "lat.\np50 s",
                 "lat.\np99 s", "done", "err")  # fmt: skip


def render_table(report: BenchReport) -> Table:
    """Per concurrency, one row per server; the ratios mlxdeploy / mlx_lm.server on its row."""
    title = f"{report.settings.max_tokens} tokens per request, closed-loop clients"
    caption = f"ratio: {MLXDEPLOY} / {MLX_LM}" if report.ratios else None
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
    for name in TABLE_COLUMNS:
        text = name == "server"
        table.add_column(name, justify="left" if text else "right", no_wrap=text, min_width=4)
    if report.ratios:
        table.add_column("ratio\ntok/s", justify="right", min_width=5)
        table.add_column("ratio\nTTFT99", justify="right", min_width=5)
    ratios = {r.concurrency: r for r in report.ratios}
    for level in report.settings.concurrency:
        for server in report.servers:
            stats = next((s for s in server.levels if s.concurrency == level), None)
            row = [str(level), server.name, *_level_cells(stats)]
            if report.ratios:
                found = ratios.get(level) if server.name == MLXDEPLOY else None
                row += [_x(found.throughput), _x(found.ttft_p99)] if found else ["", ""]
            table.add_row(*row)
        table.add_section()
    return table


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


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Target:
    """A server to benchmark: started from `command`, or already running at `url`."""

    name: str
    url: str
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to the bench's environment


def bench_server(report: ServerReport, load: LoadSettings, progress: Progress) -> None:
    for level in load.concurrency:
        total = None if load.duration_s else level * load.requests_per_client
        task = progress.add_task(f"{report.name} c={level}", total=total)

        def done(result: RequestResult, task: TaskID = task) -> None:
            progress.advance(task)

        stats = asyncio.run(run_level(report.url, level, load, done))
        progress.update(task, total=stats.requests, completed=stats.requests)
        report.levels.append(stats)


def run_target(target: Target, options: BenchOptions, progress: Progress) -> ServerReport:
    if target.command is None:
        report = ServerReport(target.name, target.url, health=fetch_health(target.url))
        bench_server(report, options.load, progress)
        return report
    log_path = options.out / f"{target.name}.log"
    with launched(target, log_path):
        report = ServerReport(target.name, target.url, target.command, str(log_path), target.env)
        report.health = fetch_health(target.url)
        bench_server(report, options.load, progress)
    log = log_path.read_text(errors="replace")
    report.blas = blas_line(json.dumps(report.health)) or blas_line(log)
    return report


def same_blas(target: Target, servers: list[ServerReport]) -> Target:
    """mlx_lm.server with the BLAS library mlxdeploy loaded (LD_PRELOAD has the same effect),
    so the comparison measures the servers rather than the BLAS."""
    loaded = next((s.blas for s in servers if s.name == MLXDEPLOY and s.blas), None)
    library = re.search(r"\((/[^)]+)\)", loaded) if loaded else None
    if library is None:
        return target
    preload = " ".join(filter(None, (library.group(1), os.environ.get("LD_PRELOAD"))))
    return replace(target, env={**target.env, "LD_PRELOAD": preload})


def planned_targets(options: BenchOptions) -> list[Target]:
    if options.spec is None or options.spec_path is None:
        assert options.url is not None
        return [Target("server", options.url)]
    port = free_port()
    command = mlxdeploy_command(options.spec_path, port)
    targets = [Target(MLXDEPLOY, f"http://127.0.0.1:{port}", command)]
    if options.compare:
        model_dir = resolve_model_dir(options.spec)
        port = free_port()
        command = mlx_lm_command(model_dir, options.spec, options.load, port)
        targets.append(Target(MLX_LM, f"http://127.0.0.1:{port}", command))
    return targets


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
        for target in planned_targets(options):
            if target.name == MLX_LM and options.same_blas:
                target = same_blas(target, report.servers)
            report.servers.append(run_target(target, options, progress))
    finish_report(report, options.out, console)
    return report


def finish_report(report: BenchReport, out: Path, console: Console) -> None:
    names = {s.name: s for s in report.servers}
    if MLXDEPLOY in names and MLX_LM in names:
        report.ratios = compare_levels(names[MLXDEPLOY], names[MLX_LM])
    report.machine.blas = next((s.blas for s in report.servers if s.blas), None)
    report.files["json"] = str(out / "bench.json")
    try:
        from .plot import plot_report

        plot_report(report, out / "bench.png")
        report.files["png"] = str(out / "bench.png")
    except ImportError:
        console.print("plot skipped: matplotlib is missing (pip install 'mlxdeploy[bench]')")
    write_json(report, out / "bench.json")
    console.print(render_table(report))
    console.print("  ".join(f"{kind}: {path}" for kind, path in report.files.items()))
