"""Progress of the slow steps of making a model ready: downloading it, converting a GGUF file
and reading the weights into memory (minutes each for a 7B model).

`TerminalProgress` draws a Rich progress bar on stderr, for a person at a terminal.
`LogProgress` writes log lines instead (log files, pipes, JSON logs): one when a step starts,
one when its phase changes, one every LOG_EVERY_SECONDS while it runs, one at the end.
Neither imports MLX.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from rich.progress import ProgressColumn

log = logging.getLogger("mlxdeploy.engine")

Unit = Literal["bytes", "tensors", "files"]
LOG_EVERY_SECONDS = 5.0


class Step(Protocol):
    """One step in progress; a context manager that reports the end when it exits cleanly.
    `advance` may be called from any thread."""

    def __enter__(self) -> Step: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None: ...

    def advance(self, amount: float = 1) -> None: ...

    def set_total(self, total: float) -> None: ...

    def phase(self, text: str) -> None:
        """What the step does now, for steps of several parts (reading, then writing)."""


class Progress(Protocol):
    def step(self, label: str, total: float | None, unit: Unit) -> Step: ...


def amount(value: float, unit: Unit) -> str:
    if unit != "bytes":
        return f"{value:.0f} {unit}"
    return size(value)


def size(value: float) -> str:
    for size, suffix in ((1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "kB")):
        if value >= size:
            return f"{value / size:.1f} {suffix}"
    return f"{value:.0f} B"


class LogStep:
    def __init__(self, label: str, total: float | None, unit: Unit) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0.0
        self._started = self._logged_at = time.monotonic()
        self._lock = threading.Lock()

    def __enter__(self) -> LogStep:
        size = f" ({amount(self.total, self.unit)})" if self.total else ""
        log.info("%s: started%s", self.label, size)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None:
            took = time.monotonic() - self._started
            size = f" ({amount(self.done, self.unit)})" if self.done else ""
            log.info("%s: done in %.1f s%s", self.label, took, size)

    def advance(self, amount: float = 1) -> None:
        with self._lock:
            self.done += amount
            now = time.monotonic()
            if now - self._logged_at >= LOG_EVERY_SECONDS:
                self._logged_at = now
                log.info("%s: %s", self.label, self._so_far())

    def set_total(self, total: float) -> None:
        with self._lock:
            self.total = total

    def phase(self, text: str) -> None:
        with self._lock:
            self._logged_at = time.monotonic()
        log.info("%s: %s", self.label, text)

    def _so_far(self) -> str:
        done = amount(self.done, self.unit)
        if not self.total:
            return f"{done} so far"
        share = min(100.0, 100 * self.done / self.total)
        if self.unit != "bytes":
            return f"{share:.0f}% ({self.done:.0f} of {amount(self.total, self.unit)})"
        return f"{share:.0f}% ({done} of {amount(self.total, self.unit)})"


class Silent:
    """A step that reports nothing."""

    def __enter__(self) -> Silent:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        pass

    def advance(self, amount: float = 1) -> None:
        pass

    def set_total(self, total: float) -> None:
        pass

    def phase(self, text: str) -> None:
        pass


class LogProgress:
    def step(self, label: str, total: float | None, unit: Unit) -> LogStep:
        return LogStep(label, total, unit)


class TerminalStep:
    """A Rich progress bar for one step, on stderr; it stays on screen when done."""

    def __init__(self, label: str, total: float | None, unit: Unit) -> None:
        from rich.console import Console
        from rich.progress import Progress as Bars

        self.label = label
        self.unit = unit
        self._bars = Bars(*_columns(unit), console=Console(stderr=True), transient=False)
        self._task = self._bars.add_task(label, total=total)

    def __enter__(self) -> TerminalStep:
        self._bars.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        task = self._bars.tasks[0]
        if kind is None and task.total is None:
            self._bars.update(self._task, total=task.completed or 1, completed=task.completed or 1)
        self._bars.stop()

    def advance(self, amount: float = 1) -> None:
        self._bars.advance(self._task, amount)

    def set_total(self, total: float) -> None:
        self._bars.update(self._task, total=total)

    def phase(self, text: str) -> None:
        self._bars.update(self._task, description=f"{self.label}: {text}")


def _columns(unit: Unit) -> list[ProgressColumn]:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    counts: list[ProgressColumn] = (
        [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn()]
    )
    return [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        *counts,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]


class TerminalProgress:
    def step(self, label: str, total: float | None, unit: Unit) -> TerminalStep:
        return TerminalStep(label, total, unit)


def progress_for(log_format: str) -> Progress:
    """Bars for a person at a terminal reading text logs; log lines for everything else."""
    if log_format == "text" and sys.stderr.isatty():
        return TerminalProgress()
    return LogProgress()
