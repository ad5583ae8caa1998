"""Which models stay in memory: the machine's budget, and each model's residency.

A spec whose models do not all fit at once serves them in turn: `load: on_demand` models load
when a request names them, and the least recently used unpinned models make room.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from .formats import Section
from .problems import show_value

UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
         "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1 << 10, "mib": 1 << 20,
         "gib": 1 << 30, "tib": 1 << 40}  # fmt: skip
SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
Load = Literal["eager", "on_demand"]


def parse_budget(value: Any) -> Any:
    """A size ("48GiB", "512 MB", bytes as an int) stays a size in bytes (an int); a fraction
    of the device's memory is a float in (0, 1]."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 48GiB or a fraction such as 0.8, got {value}")
    if isinstance(value, float):
        if not 0 < value <= 1:
            raise ValueError(f"a fraction of the device's memory is in (0, 1], got {value}")
        return value
    if isinstance(value, int):
        return _positive(value, value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 48GiB or a fraction, got {show_value(value)}")
    match = SIZE.match(value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in UNITS:
        raise ValueError(
            f"expected a size such as 48GiB, 64GB or 512MiB, or a fraction such as 0.8; "
            f"got {show_value(value)}"
        )
    if not unit and "." in match.group(1):  # "0.8", as an environment variable says it
        return parse_budget(float(match.group(1)))
    return _positive(int(float(match.group(1)) * UNITS[unit]), value)


def _positive(size: int, shown: Any) -> int:
    if size <= 0:
        raise ValueError(f"the budget must be more than 0 bytes, got {show_value(shown)}")
    return size


Budget = Annotated[int | float, BeforeValidator(parse_budget, json_schema_input_type=str | float)]


class MemorySettings(Section):
    """The memory the models' weights may take together, and how long a request waits for a
    model to load. Models beyond it load on demand and evict the least recently used ones."""

    budget: Budget | None = Field(
        default=None,
        description=(
            "What the weights of the models in memory may take together: a size (48GiB, "
            "64GB) or a fraction of the device's memory (0.8): the Metal working-set limit on "
            "Apple silicon, the GPU's memory on CUDA, RAM on a CPU. Default: all of it. Leave "
            "room for the KV caches and prefix caches of the requests."
        ),
    )
    load_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description=(
            "How long a request waits for its model to load (and for room to load it); "
            "past it the answer is 503 with Retry-After."
        ),
    )
    idle_unload_seconds: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Unload an unpinned model after this many seconds without requests; a model's own "
            "idle_unload_seconds wins. Default: keep it until its memory is needed."
        ),
    )

    def bytes_of(self, device_memory: int) -> int:
        """The budget in bytes on a device with `device_memory` bytes."""
        if self.budget is None:
            return device_memory
        if isinstance(self.budget, float):
            return int(self.budget * device_memory)
        return self.budget


LOAD_HELP = "eager: loaded at start; on_demand: loaded when a request first names it."
PIN_HELP = "Never unloaded: not to make room for another model, nor when idle."
IDLE_HELP = (
    "Unload after this many seconds without requests (unpinned models); default: "
    "memory.idle_unload_seconds."
)


@dataclass(frozen=True)
class Residency:
    """How one model stays in memory, resolved: its own keys over `memory:`'s."""

    load: Load = "eager"
    pin: bool = False
    idle_unload_seconds: float | None = None
