"""The mlxdeploy command line: parse arguments, call the library, one line per error."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.core

from .api.guards.auth import ApiKeys, AuthConfigError, load_api_keys
from .serve.logs import configure_logging, exit_now
from .spec import Deployment, Problem, SpecError, format_problems, load_spec, spec_json_schema
from .spec.cache_size import kv_cache_notes

if TYPE_CHECKING:
    from .serve.server import ServeResult
    from .serve.sharded.rank import RankArgs

app = typer.Typer(
    help="Serve language models on MLX from declarative YAML specs with an OpenAI-compatible API.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
    # Plain click output: a usage error is the usage line and one `Error:` line, unwrapped.
    rich_markup_mode=None,
)


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class Format(StrEnum):
    text = "text"
    json = "json"
    github = "github"


SpecArg = Annotated[
    Path,
    typer.Argument(help="Path to a deployment spec (YAML).", show_default=False, metavar="SPEC"),
]


class Command(typer.core.TyperCommand):
    """Usage lines in the common style: `mlxdeploy up [OPTIONS] SPEC`, `SPECS...`."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, typer.core.TyperArgument):
                name = (param.metavar or (param.name or "").upper()) + (
                    "..." if param.nargs != 1 else ""
                )
                pieces.append(name if param.required else f"[{name}]")
        return pieces


def _version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(
            f"mlxdeploy {version('mlxdeploy')} (mlx {version('mlx')}, mlx-lm {version('mlx-lm')})"
        )
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the versions and exit."
        ),
    ] = False,
) -> None:
    """Serve language models on MLX from declarative YAML specs with an OpenAI-compatible API."""


def _fail(problems: list[Problem], fmt: Format = Format.text) -> typer.Exit:
    typer.echo(format_problems(problems, fmt.value), err=fmt is Format.text)
    return typer.Exit(1)


@app.command(cls=Command)
def validate(
    specs: Annotated[
        list[Path],
        typer.Argument(help="Spec files to check.", show_default=False, metavar="SPECS"),
    ],
    fmt: Annotated[
        Format, typer.Option("--format", help="text: path:line:col lines; github: annotations.")
    ] = Format.text,
    no_weights: Annotated[
        bool,
        typer.Option(
            "--no-weights",
            help=(
                "For CI boxes without the models: a model source whose files are not here "
                "(a pkg: package not installed, an HF repo not in the cache, a missing path) "
                "is checked for its form only. Files that are here are still checked."
            ),
        ),
    ] = False,
) -> None:
    """Check specs without loading any weights; exit 1 if any has a problem.

    Checks YAML, keys and types, extends layering, ${VAR}s, templates, tool parsers, response
    schemas, model sources (GGUF and safetensors headers), adapters against their models, and
    whether the weights fit the memory budget (the models loaded at start together, the pinned
    ones, each model beside the pinned ones). Each problem is printed once, however many of the
    specs extend the file it is in."""
    from .spec.problems import unique

    problems: list[Problem] = []
    notes: list[str] = []
    for path in specs:
        try:
            notes += kv_cache_notes(load_spec(path, require_weights=not no_weights))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise _fail(unique(problems), fmt)
    if fmt is Format.json:
        typer.echo("[]")
    elif fmt is Format.text:
        note = " (model files not on this machine: form checked only)" if no_weights else ""
        typer.echo(f"{len(specs)} spec{'s' if len(specs) != 1 else ''} valid{note}")
        for line in dict.fromkeys(notes):
            typer.echo(line)


@app.command(cls=Command)
def up(
    spec: SpecArg,
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (beats spec and env).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port to bind (beats spec and env); 0: a free one, named when ready."),
    ] = None,
    log_level: Annotated[LogLevel, typer.Option(help="Least severe level logged.")] = LogLevel.info,
    log_format: Annotated[
        LogFormat | None,
        typer.Option(help="text, or json: one JSON object per line (beats server.log_format)."),
    ] = None,
) -> None:
    """Validate SPEC, load its models and serve the OpenAI-compatible API until SIGINT/SIGTERM.

    With `cluster` in SPEC: replicas on Ray Serve behind its proxy; with `distributed`: the
    model split over ranks that mlx.launch starts, rank 0 serving."""
    loaded, api_keys = _load_for_serving(spec, host, port, log_format)
    configure_logging(loaded.spec.server, log_level.value)
    if loaded.spec.cluster is not None:
        result = _serve_replicas(loaded, spec, log_format, log_level)
    elif loaded.spec.distributed is not None:
        from .serve.sharded.rank import RankArgs

        formats = log_format.value if log_format else None
        flags = RankArgs(spec, log_level.value, formats, host, port)
        result = _serve_ranks(loaded, spec, flags)
    else:
        from .serve.server import serve

        result = asyncio.run(serve(loaded, api_keys))
    if result.error:
        typer.echo(f"{spec}: {result.field}: {result.error}", err=True)
    exit_now(result.exit_code)


def _serve_replicas(
    loaded: Deployment, spec: Path, log_format: LogFormat | None, log_level: LogLevel
) -> ServeResult:
    from .serve.replicas.launch import serve_replicas
    from .serve.replicas.options import ReplicaArgs
    from .services import replica_environment, service_of

    service = service_of(loaded, spec, Path.cwd())
    overrides = {"server": {"log_format": log_format.value}} if log_format else {}
    args = ReplicaArgs(str(service.spec), overrides, log_level.value)
    return serve_replicas(loaded.spec, args, replica_environment(service, with_secrets=True))


def _serve_ranks(loaded: Deployment, spec: Path, flags: RankArgs) -> ServeResult:
    from .serve.sharded.launch import serve_ranks
    from .services import service_of

    assert loaded.spec.distributed is not None
    service = service_of(loaded, spec, Path.cwd())
    args = dataclasses.replace(flags, spec=service.spec)
    return serve_ranks(loaded.spec.distributed, args.argv(), service.environment)


def _load_for_serving(
    spec: Path, host: str | None, port: int | None, log_format: LogFormat | None
) -> tuple[Deployment, ApiKeys | None]:
    """The spec with the flags over it, and its API keys; exits with one line per problem.

    Port 0 (any free port) is a flag only: a spec names the port clients are told about."""
    overrides: dict[str, Any] = {"host": host, "port": port or None}
    if log_format is not None:
        overrides["server"] = {"log_format": log_format.value}
    try:
        loaded = load_spec(spec, **overrides)
        api_keys = load_api_keys(loaded.spec.auth, loaded.base_dir)
    except SpecError as exc:
        raise _fail(exc.problems) from None
    except AuthConfigError as exc:
        raise _fail([Problem(str(spec), None, None, exc.field, exc.message)]) from None
    if port == 0:
        loaded = dataclasses.replace(loaded, spec=loaded.spec.model_copy(update={"port": 0}))
    return loaded, api_keys


class RenderAs(StrEnum):
    systemd = "systemd"
    launchd = "launchd"
    ray = "ray"


@app.command(cls=Command)
def render(
    spec: SpecArg,
    as_: Annotated[
        RenderAs | None,
        typer.Option(
            "--as",
            help="Instead: a systemd unit or a launchd plist that runs `mlxdeploy up SPEC`, "
            "or a Ray Serve config file (KubeRay's serveConfigV2) that deploys its replicas.",
        ),
    ] = None,
) -> None:
    """Print SPEC as resolved (file, environment, defaults; secrets masked), the sampling a
    request without sampling fields gets on each id, and the routes; or a service for it."""
    try:
        loaded = load_spec(spec)
    except SpecError as exc:
        raise _fail(exc.problems) from None
    if as_ is None:
        from .render import render as render_spec

        typer.echo(render_spec(loaded), nl=False)
        return
    from .services import Service, launchd_plist, ray_serve_config, service_of, systemd_unit

    service = service_of(loaded, spec, Path.cwd())
    renderers: dict[RenderAs, Callable[[Service], str]] = {
        RenderAs.systemd: systemd_unit,
        RenderAs.launchd: launchd_plist,
        RenderAs.ray: partial(ray_serve_config, loaded.spec),
    }
    typer.echo(renderers[as_](service), nl=False)


@app.command(cls=Command)
def status(
    url: Annotated[
        str,
        typer.Argument(
            help="Base URL of a running mlxdeploy: http://host:port, or the /v1 URL clients use.",
            show_default=False,
            metavar="URL",
        ),
    ],
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="MLXDEPLOY_API_KEY",
            help="One of the server's API keys (auth.api_keys_env / auth.api_keys_file).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server.")] = 10.0,
) -> None:
    """List the requests running and queued on each model of a running server: request id,
    state (queued, prefill, decoding), age, prompt and completion tokens; each model's state
    (unloaded, loading, ready), its memory and whether it is pinned, and the weights in memory
    against the budget."""
    from rich.console import Console

    from .status import StatusError, fetch_status, status_table

    try:
        report = fetch_status(url, api_key, timeout)
    except StatusError as exc:
        typer.echo(f"status: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    console = Console()
    if not console.is_terminal:  # piped: one line per request, for grep and awk
        console = Console(width=1000)
    console.print(status_table(report, url))


@app.command(cls=Command)
def schema() -> None:
    """Print the JSON Schema of the spec (for editors and yaml-language-server)."""
    typer.echo(json.dumps(spec_json_schema(), indent=2))


@app.command(cls=Command)
def bench(
    url: Annotated[
        str | None, typer.Option(help="Base URL of a running OpenAI-compatible server.")
    ] = None,
    spec: Annotated[
        Path | None, typer.Option(help="Start `mlxdeploy up SPEC` on a free port and bench it.")
    ] = None,
    compare: Annotated[
        bool, typer.Option(help="Also start mlx_lm.server on the spec's model and bench it.")
    ] = False,
    same_blas: Annotated[
        bool, typer.Option(help="Give mlx_lm.server the BLAS mlxdeploy loaded (LD_PRELOAD).")
    ] = True,
    ceiling: Annotated[
        bool,
        typer.Option(
            help="With --spec: first run the same load on the engine in-process (no HTTP) and "
            "decode-only at each level; the table shows mlxdeploy's share of both."
        ),
    ] = True,
    concurrency: Annotated[
        str, typer.Option(help="Comma-separated numbers of concurrent clients.")
    ] = "1,8,32,64,256",
    max_tokens: Annotated[int, typer.Option(help="Completion tokens per request.")] = 64,
    prompt_tokens: Annotated[int, typer.Option(help="Approximate prompt length in tokens.")] = 128,
    requests_per_client: Annotated[
        int, typer.Option(help="Requests each client sends per level.")
    ] = 4,
    duration: Annotated[
        float | None, typer.Option(help="Seconds per level instead of --requests-per-client.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds a request may take.")] = 600.0,
    extra_body: Annotated[
        str | None, typer.Option(help="JSON fields added to requests, e.g. '{\"logprobs\": true}'.")
    ] = None,
    extra_share: Annotated[float, typer.Option(help="Share of requests given them, 0-1.")] = 1.0,
    out: Annotated[
        Path | None, typer.Option(help="Results dir (JSON, PNG, logs); default ./bench-<time>.")
    ] = None,
) -> None:
    """Closed-loop load test with streaming chat completions; with --spec, beside the engine's
    in-process ceiling (and mlx_lm.server with --compare)."""
    from rich.console import Console

    from .bench import BenchError
    from .bench.report import LoadSettings
    from .bench.run import build_options, parse_concurrency, parse_extra_body, run_bench

    try:
        load = LoadSettings(
            parse_concurrency(concurrency), max_tokens, prompt_tokens, requests_per_client,
            duration, timeout, parse_extra_body(extra_body), extra_share,
        )  # fmt: skip
        run_bench(build_options(load, out, url, spec, compare, same_blas, ceiling), Console())
    except SpecError as exc:
        raise _fail(exc.problems) from None
    except BenchError as exc:
        typer.echo(f"bench: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("bench: interrupted; servers stopped", err=True)
        raise typer.Exit(130) from None


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
