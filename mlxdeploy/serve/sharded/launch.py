"""`mlxdeploy up` on a spec with `distributed`: start the ranks through mlx.launch and stand
between it and the terminal.

mlx.launch runs in a session of its own, so the terminal's Ctrl-C reaches only `up`, which
then writes "stop" to mlx.launch's stdin (mlx.launch hands it to every rank; rank 0 drains,
then tells the others to stop). mlx.launch exits 0 whatever the ranks did, so `up` reads
rank 0's exit status off its stdout (rank.py prints it last) and passes every other line on.
When a rank dies, mlx.launch stops the others; rank 0 has already failed its requests."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from ...spec.scale import DistributedSettings
from ..server import ServeResult
from .rank import EXIT_STATUS, STOP

RANK_MODULE = "mlxdeploy.serve.sharded.rank"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def launcher() -> str | None:
    """mlx.launch beside this Python (a virtual environment's), else on PATH."""
    beside = Path(sys.executable).parent / "mlx.launch"
    return str(beside) if beside.is_file() else shutil.which("mlx.launch")


def launch_command(
    distributed: DistributedSettings, launch: str, rank_args: list[str], env: dict[str, str]
) -> list[str]:
    """mlx.launch's command line: where the ranks run, and each rank's own command."""
    if distributed.hosts is not None:
        where = ["--hosts", ",".join(distributed.hosts)]
    else:
        where = ["--hosts", "127.0.0.1", "-n", str(distributed.size)]
    return [
        launch,
        "--backend",
        distributed.backend,
        *where,
        "--starting-port",
        str(distributed.starting_port),
        "--python",
        sys.executable,
        "--cwd",
        os.getcwd(),
        *(f"--env={name}={value}" for name, value in env.items()),
        "--",
        "-m",
        RANK_MODULE,
        *rank_args,
    ]


def shared_cores(distributed: DistributedSettings, env: dict[str, str]) -> dict[str, str]:
    """Ranks on this machine share its cores: each BLAS gets its part, not all of them (two
    ranks each running a thread per core made every decode step 2x slower here)."""
    if distributed.hosts is not None or "OPENBLAS_NUM_THREADS" in os.environ:
        return env
    threads = max(1, (os.cpu_count() or 1) // distributed.size)
    return {**env, "OPENBLAS_NUM_THREADS": str(threads)}


def serve_ranks(
    distributed: DistributedSettings, rank_args: list[str], env: dict[str, str]
) -> ServeResult:
    launch = launcher()
    if launch is None:
        return ServeResult(1, "distributed needs mlx.launch (it comes with mlx)", "distributed")
    command = launch_command(distributed, launch, rank_args, shared_cores(distributed, env))
    ranks = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_end_with_parent,
    )
    assert ranks.stdin is not None and ranks.stdout is not None
    status: list[int] = []
    relay = threading.Thread(target=_relay, args=(ranks.stdout, status), daemon=True)
    relay.start()
    _stop_on_signals(ranks.stdin)
    ranks.wait()
    relay.join()
    if not status:
        return ServeResult(1, "rank 0 ended without an exit status (killed?)", "distributed")
    return ServeResult(status[-1])


def _relay(stdout: IO[bytes], status: list[int]) -> None:
    for raw in stdout:
        line = raw.decode(errors="replace")
        if line.startswith(EXIT_STATUS):
            status.append(int(line[len(EXIT_STATUS) :].strip()))
            continue
        sys.stdout.write(line)
        sys.stdout.flush()


def _stop_on_signals(stdin: IO[bytes]) -> None:
    def stop(signum: int, frame: Any) -> None:
        try:
            stdin.write(f"{STOP}\n".encode())
            stdin.flush()
        except (BrokenPipeError, ValueError):  # mlx.launch has already gone
            pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
        signal.signal(signum, stop)


def _end_with_parent() -> None:
    """In mlx.launch, before it starts: on Linux, a SIGTERM when `up` dies (even by SIGKILL),
    which ends mlx.launch, closing rank 0's stdin, which drains it (rank.py)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
