"""Fault injection, a test hook: make generation fail on purpose inside a real server process.

MLX on a CPU does not enforce `mx.set_memory_limit` (allocations past it succeed), so there is no
honest way to make a step run out of memory in a test. The engine reads these variables once
at start; unset, nothing is injected. Not for production use.

- `MLXDEPLOY_FAULT_AFTER_TOKENS=N`: a generation step raises when a request in the batch has
  already generated N tokens, so requests for more than N tokens fail and shorter ones work.
- `MLXDEPLOY_FAULT_KIND=error` (default): the step raises an ordinary exception, which the
  worker contains; `crash`: the generation thread dies, as it would from a bug.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

AFTER_TOKENS = "MLXDEPLOY_FAULT_AFTER_TOKENS"
KIND = "MLXDEPLOY_FAULT_KIND"


class InjectedFault(RuntimeError):
    """A step failure on purpose; contained like any other exception in a step."""


class InjectedCrash(BaseException):
    """Not an Exception, so nothing in the worker catches it: the generation thread dies."""


@dataclass(frozen=True)
class FaultPlan:
    after_tokens: int
    crash: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FaultPlan | None:
        """The plan the environment asks for, or None; raises ValueError naming a bad value."""
        raw = env.get(AFTER_TOKENS, "").strip()
        if not raw:
            return None
        if not raw.isdigit():
            raise ValueError(f"{AFTER_TOKENS} must be a whole number of tokens, got {raw!r}")
        kind = env.get(KIND, "error").strip() or "error"
        if kind not in ("error", "crash"):
            raise ValueError(f"{KIND} must be 'error' or 'crash', got {kind!r}")
        return cls(after_tokens=int(raw), crash=kind == "crash")

    def check(self, generated: Iterable[int]) -> None:
        """Called before each step with the tokens each request in the batch has generated."""
        if any(count >= self.after_tokens for count in generated):
            message = f"injected fault after {self.after_tokens} tokens ({AFTER_TOKENS})"
            raise InjectedCrash(message) if self.crash else InjectedFault(message)
