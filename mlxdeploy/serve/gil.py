"""The interpreter's thread switch interval, shortened for a process that serves models.

Each model's generation thread builds a decode step's graph in Python, then waits in `mx.eval`
(which releases the GIL) while the step runs; the event loop renders and writes the streams'
chunks in between. When the step ends while the loop holds the GIL, the generation thread waits
for the loop to give it up: at the latest after `sys.getswitchinterval()`, 5 ms by default,
which is half a decode step of an 8B model on a GPU. At 1 ms, on an H200 with an 8B model, a
single stream went from 89-107 to 123 tok/s and 64 streams from 2,000-2,200 to 2,360
(BENCHMARKS.md).
"""

from __future__ import annotations

import sys

SWITCH_INTERVAL_S = 0.001


def hand_back_the_gil_sooner() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
