"""One rank of a distributed model, as mlx.launch starts it (`launch.py` says how).

Rank 0 serves HTTP; "stop" on its stdin (mlx.launch hands every rank what `up` writes to
it) drains it as SIGINT would, while a SIGTERM (mlx.launch's, when another rank has exited)
ends its requests with that reason. At the end it prints its exit status on stdout, the one line
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...api.guards.auth import ApiKeys, AuthConfigError, load_api_keys
from ...engine.weights.blas import load_fast_blas
from ...spec.deployment import Deployment
from ...spec.load import load_spec
from ...spec.problems import SpecError
from ..logs import configure_logging, exit_now

if TYPE_CHECKING:
    from ...engine.peers import Peers

EXIT_STATUS = "mlxdeploy: rank 0 exits with status "
STOP = "stop"


@dataclass(frozen=True)
class RankArgs:
    """What `up` hands each rank on its command line: the spec and `up`'s own flags."""

    spec: Path
    log_level: str = "info"
    log_format: str | None = None
    host: str | None = None
    port: int | None = None

    def argv(self) -> list[str]:
        args = [str(self.spec), "--log-level", self.log_level]
        for flag, value in (("--log-format", self.log_format), ("--host", self.host)):
            args += [flag, value] if value else []
        return args + (["--port", str(self.port)] if self.port is not None else [])

    @classmethod
    def parse(cls, argv: list[str]) -> RankArgs:
        parser = argparse.ArgumentParser(prog="mlxdeploy-rank")
        parser.add_argument("spec", type=Path)
        parser.add_argument("--log-level", default="info")
        parser.add_argument("--log-format", choices=("text", "json"))
        parser.add_argument("--host")
        parser.add_argument("--port", type=int)
        return cls(**vars(parser.parse_args(argv)))

    def load(self) -> Deployment:
        overrides: dict[str, Any] = {"host": self.host, "port": self.port or None}
        if self.log_format:
            overrides["server"] = {"log_format": self.log_format}
        loaded = load_spec(self.spec, **overrides)
        if self.port == 0:
            return replace(loaded, spec=loaded.spec.model_copy(update={"port": 0}))
        return loaded


def main(argv: list[str]) -> int:
    args = RankArgs.parse(argv)
    blas = load_fast_blas()  # before anything imports MLX
    try:
        loaded = args.load()
        api_keys = load_api_keys(loaded.spec.auth, loaded.base_dir)
    except SpecError as exc:
        return _fail(*(str(problem) for problem in exc.problems))
    except AuthConfigError as exc:
        return _fail(f"{args.spec}: {exc.field}: {exc.message}")
    spec = loaded.spec
    configure_logging(spec.server, args.log_level)
    logging.getLogger("mlxdeploy").info(blas.describe())
    import mlx.core as mx

    from ...engine.peers import Peers

    assert spec.distributed is not None, "launch.py starts ranks for distributed specs only"
    try:
        group = mx.distributed.init(strict=True, backend=spec.distributed.backend)
    except RuntimeError as exc:  # a port in use, a host that cannot be reached
        return _fail(f"{args.spec}: distributed: the ranks could not connect: {exc}")
    peers = Peers(group, spec.distributed.strategy)
    if peers.leader:
        return lead(loaded, api_keys, peers, args.spec)
    name_the_rank(peers.rank)
    return follow(loaded, peers)


def _fail(*lines: str) -> int:
    for line in lines:
        print(line, file=sys.stderr)
    if os.environ.get("MLX_RANK", "0") == "0":  # `up` reads rank 0's status, whatever failed
        print(f"{EXIT_STATUS}1", flush=True)
    return 1


def lead(deployment: Deployment, api_keys: ApiKeys | None, peers: Peers, path: Path) -> int:
    from ..server import serve

    # Until the server's own handlers are in place, a "stop" (SIGINT) is dropped rather than
    # raised as KeyboardInterrupt; `up` escalates a second Ctrl-C to SIGTERM for the ranks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_stop_on_stdin, name="mlxdeploy-stdin", daemon=True).start()
    result = asyncio.run(serve(deployment, api_keys, peers))
    if result.error:
        print(f"{path}: {result.field}: {result.error}", file=sys.stderr)
    print(f"{EXIT_STATUS}{result.exit_code}", flush=True)
    return result.exit_code


def follow(deployment: Deployment, peers: Peers) -> int:
    from ...engine.engine import MLXEngine

    (model,) = deployment.catalog.models  # the spec's validation allows one model
    state = MLXEngine(model, peers=peers).follow()
    return 0 if state == "stopped" else 1


def _stop_on_stdin() -> None:
    """Each "stop" line is a SIGINT (the first drains, a second stops at once); so is the end
    of stdin, which comes when mlx.launch (and so `up`) is gone."""
    for line in sys.stdin:
        if line.strip() == STOP:
            os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)


def name_the_rank(rank: int) -> None:
    """A follower's log lines say which rank wrote them (rank 0's are the server's)."""

    def tag(record: logging.LogRecord) -> bool:
        record.msg = f"rank {rank}: {record.msg}"
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))
