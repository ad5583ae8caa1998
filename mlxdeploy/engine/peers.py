"""The ranks of one distributed model (mx.distributed), from one rank's generation thread.

Rank 0 (the leader) serves HTTP and runs the engine as on one process. Every other rank (a
follower) runs the same generation loop on its own shard of the weights, in lockstep:

- each turn of the loop, the leader hands every rank what it took from its queues (the
  requests it admits, the ones it drops, whether it stops): `share`, one collective;
- each decode step, the tokens the leader sampled replace every rank's own: `agree`. The
  ranks then feed the same tokens to the next step, so their batches, caches and stop
  decisions stay the same whatever their own logits or random state.

A rank that dies makes the next collective fail on the others ("connection to a peer was
lost"): `LostRank`, which ends their generation.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np

from ..sharding import Strategy, split_problem
from .api import SamplingParams


class LostRank(RuntimeError):
    """A collective failed: some rank is gone, and this one cannot generate any more."""


@dataclass(frozen=True)
class Order:
    """One request as the followers rebuild it (no sink: their events go nowhere)."""

    prompt: list[int]
    params: SamplingParams
    label: str = ""
    boundary: int = 0  # where its system prompt ends (the prefix cache keeps it apart)


@dataclass
class Tick:
    """What one turn of the generation loop takes from its queues, in order."""

    admitted: list[Order | tuple[Order, ...]] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)  # uids in the batch
    stop: bool = False


class Peers:
    def __init__(self, group: Any, strategy: Strategy = "tensor") -> None:
        self.group = group
        self.strategy: Strategy = strategy
        self.rank = int(group.rank())
        self.size = int(group.size())

    def shard(self, model: Any) -> None:
        """This rank's part of a lazily loaded model: a slice of every layer (tensor) or a
        run of whole layers (pipeline), as mlx-lm's models split themselves."""
        args = getattr(model, "args", None)
        problem = split_problem(vars(args) if args is not None else {}, self.size, self.strategy)
        tensor, pipeline = (
            hasattr(model, "shard"),
            hasattr(getattr(model, "model", None), "pipeline"),
        )
        kind = type(model).__module__.rsplit(".", 1)[-1]
        if self.strategy == "tensor" and not tensor:
            problem = f"mlx-lm cannot split '{kind}' models by heads (tensor)"
        if self.strategy == "pipeline" and not pipeline:
            problem = f"mlx-lm cannot split '{kind}' models by layers (pipeline)"
        if problem is not None:
            raise ValueError(problem)
        if self.strategy == "tensor":
            model.shard(self.group)
        else:
            model.model.pipeline(self.group)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        self._sum(mx.array(0))

    def share(self, tick: Tick | None) -> Tick:
        """The leader's tick, on every rank (the leader passes it, the others None): its size,
        then, unless it is empty (most turns), the tick itself."""
        payload = pickle.dumps(tick) if self.leader and tick != Tick() else b""
        size = int(np.asarray(self._sum(mx.array(len(payload)))))
        if self.leader:
            assert tick is not None
            if size:
                self._sum(mx.array(np.frombuffer(payload, dtype=np.uint8)))
            return tick
        if not size:
            return Tick()
        received = self._sum(mx.zeros(size, dtype=mx.uint8))
        shared = pickle.loads(np.asarray(received).tobytes())
        if not isinstance(shared, Tick):
            raise LostRank("the leader sent something that is not a tick")
        return shared

    def agree(self, tokens: mx.array) -> mx.array:
        """The leader's sampled tokens, on every rank (lazy, like the sampling itself)."""
        # A follower's zeros depend on its own tokens, so the sum runs after the forward
        # pass on every rank: the ranks' collectives must come in the same order.
        mine = tokens if self.leader else tokens * 0
        return mx.distributed.all_sum(mine, group=self.group)

    def _sum(self, value: mx.array) -> mx.array:
        try:
            summed = mx.distributed.all_sum(value, group=self.group)
            mx.eval(summed)
        except RuntimeError as exc:
            raise LostRank(str(exc)) from exc
        return summed
