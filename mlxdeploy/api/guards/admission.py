"""Admission control: a bounded number of requests in flight; beyond it, 429 + Retry-After."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TooManyRequests


@dataclass
class Admission:
    limit: int
    retry_after: int = 1
    in_flight: int = 0

    def enter(self) -> Slot:
        if self.in_flight >= self.limit:
            raise TooManyRequests(
                f"the server is at capacity ({self.limit} requests in flight); retry later",
                self.retry_after,
            )
        self.in_flight += 1
        return Slot(self)


@dataclass
class Slot:
    admission: Admission
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission.in_flight -= 1
