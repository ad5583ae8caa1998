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
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ...spec.scale import DistributedSettings
from ..server import ServeResult
from .rank import EXIT_STATUS, STOP

RANK_MODULE = "mlxdeploy.serve.sharded.rank"
STATUS_LINE = re.compile(re.escape(EXIT_STATUS) + r"(\d+)\n?")
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
        preexec_fn=_ended_with(os.getpid()),
    )
    assert ranks.stdin is not None and ranks.stdout is not None
    status: list[int] = []
    relay = threading.Thread(target=_relay, args=(ranks.stdout, status), daemon=True)
    relay.start()
    _stop_on_signals(ranks)
    ranks.wait()
    relay.join()
    if not status:
        message = (
            f"rank 0 ended without an exit status (mlx.launch exited {ranks.returncode}); "
            "the lines above say why"
        )
        return ServeResult(1, message, "distributed")
    return ServeResult(status[-1])


def _relay(stdout: IO[bytes], status: list[int]) -> None:
    """mlx.launch's stdout, passed on, less rank 0's status (found anywhere in a line: the
    ranks' output arrives in chunks that may share a line)."""
    for raw in stdout:
        line = raw.decode(errors="replace")
        found = STATUS_LINE.search(line)
        if found:
            status.append(int(found.group(1)))
            line = line[: found.start()] + line[found.end() :]
        if line.strip():
            sys.stdout.write(line)
            sys.stdout.flush()


def _stop_on_signals(ranks: subprocess.Popen[bytes]) -> None:
    """The first signal asks rank 0 to drain ("stop"); the next one ends every rank."""
    asked: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        asked.append(signum)
        try:
            if len(asked) > 1:
                os.killpg(ranks.pid, signal.SIGTERM)  # mlx.launch's own session
                return
            assert ranks.stdin is not None
            ranks.stdin.write(f"{STOP}\n".encode())
            ranks.stdin.flush()
        except (BrokenPipeError, ValueError, ProcessLookupError):  # already gone
            pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal closed
        signal.signal(signum, stop)


def _ended_with(parent: int) -> Callable[[], None]:
    """For mlx.launch, before it starts: on Linux, a SIGTERM when `up` dies (even by SIGKILL),
    which ends mlx.launch, closing rank 0's stdin, which drains it (rank.py). prctl is looked up
    here, not in the child: a forked child of a threaded process must not load libraries."""
    if sys.platform != "linux":
        return lambda: None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def arrange() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # `up` died before the call
            os.kill(os.getpid(), signal.SIGTERM)

    return arrange
