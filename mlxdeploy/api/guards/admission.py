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
    """One request's place in flight. Until a stream claims it, the request's scope releases
    it when the request ends; a claimed slot is released by its stream's own end."""

    admission: Admission
    released: bool = False
    claimed: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission.in_flight -= 1

    def claim(self) -> None:
        self.claimed = True

    def release_unclaimed(self) -> None:
        if not self.claimed:
            self.release()
