"""One rank of a distributed model, as mlx.launch starts it (`launch.py` says how).

Rank 0 serves HTTP; "stop" on its stdin (mlx.launch hands every rank what `up` writes to
it) drains it as SIGTERM would. At the end it prints its exit status on stdout, the one line
`up` needs: mlx.launch itself always exits 0. The other ranks follow rank 0 until it stops,
or until a rank is lost (exit 1)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ...engine.weights.blas import load_fast_blas
from ...spec.load import load_spec
from ...spec.problems import SpecError
from ...spec.settings import Spec
from ..logs import configure_logging

EXIT_STATUS = "mlxdeploy: rank 0 exits with status "
STOP = "stop"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mlxdeploy-rank")
    parser.add_argument("spec", type=Path)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=("text", "json"))
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    return parser.parse_args(argv)


def load(args: argparse.Namespace) -> Spec:
    overrides: dict[str, Any] = {"host": args.host, "port": args.port or None}
    if args.log_format:
        overrides["server"] = {"log_format": args.log_format}
    spec = load_spec(args.spec, **overrides)
    return spec.model_copy(update={"port": 0}) if args.port == 0 else spec


def main(argv: list[str]) -> int:
    args = parse(argv)
    blas = load_fast_blas()  # before MLX loads (checking the spec's split imports it)
    try:
        spec = load(args)
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    configure_logging(spec.server, args.log_level)
    logging.getLogger("mlxdeploy").info(blas.describe())
    import mlx.core as mx

    from ...engine.peers import Peers

    assert spec.distributed is not None, "launch.py starts ranks for distributed specs only"
    group = mx.distributed.init(strict=True, backend=spec.distributed.backend)
    peers = Peers(group, spec.distributed.strategy)
    if peers.leader:
        return lead(spec, peers, args)
    name_the_rank(peers.rank)
    return follow(spec, peers)


def lead(spec: Spec, peers: Any, args: argparse.Namespace) -> int:
    from ..server import serve

    threading.Thread(target=_stop_on_stdin, name="mlxdeploy-stdin", daemon=True).start()
    result = asyncio.run(serve(spec, None, peers))
    if result.error:
        print(f"{args.spec}: {result.field}: {result.error}", file=sys.stderr)
    print(f"{EXIT_STATUS}{result.exit_code}", flush=True)
    return result.exit_code


def follow(spec: Spec, peers: Any) -> int:
    from ...engine.engine import MLXEngine

    (model,) = spec.catalog.models  # the spec's validation allows one model
    state = MLXEngine(model, spec.engine, peers=peers).follow()
    return 0 if state == "stopped" else 1


def _stop_on_stdin() -> None:
    """Each "stop" line is a SIGTERM: the first drains, a second stops at once."""
    for line in sys.stdin:
        if line.strip() == STOP:
            os.kill(os.getpid(), signal.SIGTERM)


def name_the_rank(rank: int) -> None:
    """A follower's log lines say which rank wrote them (rank 0's are the server's)."""

    def tag(record: logging.LogRecord) -> bool:
        record.msg = f"rank {rank}: {record.msg}"
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)


if __name__ == "__main__":
    from ...cli import exit_now

    exit_now(main(sys.argv[1:]))
