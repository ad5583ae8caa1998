"""A fixed price for the draft depth rule's tests (`engine/draft_depth.py`), where the engine
times its passes instead (`engine/draft_prices.py`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ByWeights:
    """A draft pass costs `draft` passes of the model (as its weight bytes over the model's
    would say, `draft_cost`); a verification pass costs a plain one."""

    draft: float

    def price(self, k: int, rows: int) -> float:
        return 1.0 + k * self.draft
