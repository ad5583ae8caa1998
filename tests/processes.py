"""The processes a server started, read from /proc: Ray's replicas, mlx.launch's ranks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Process:
    pid: int
    command: str  # the command line, its arguments joined by spaces
    environ: dict[str, str]


def descendants(root: int) -> list[Process]:
    """Every process below `root` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    found: dict[int, Process] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            variables = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(parent, []).append(pid)
        environ = dict(v.split("=", 1) for v in variables if "=" in v)
        found[pid] = Process(pid, command, environ)
    below, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            if child in found:
                below.append(found[child])
    return below


def alive(pid: int) -> bool:
    """Whether `pid` is a process that has not ended (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
