"""Which generation loop runs a model, and with what schedule.

Models whose every layer holds keys and values (full attention or a sliding window) or state
arrays (convolutions, linear attention, SSMs), or a list of those, run on mlxdeploy's own loop
(`generator.py`, slot storage, `storage.kinds`); where their family's decoder layers allow it,
prompt chunks ride in the decode steps (`mixed.py`); with `engine.kv_bits` their
full-attention layers keep keys and values quantized (`quantized_slots.py`). Models with other
caches (a window that keeps its first tokens, chunked attention) batch through mlx-lm's batch
caches (`batch.py`), prompts read in calls of their own, in full precision. The choice is
logged once, when the model's generation thread starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from ..spec.settings import EngineSettings
from .batch import FastBatchGenerator
from .generator import UNPADDED, SlotGenerator, family
from .mixed import MIXABLE
from .quantized_slots import KVQuantization
from .speculative import Drafter
from .storage import kinds

log = logging.getLogger("mlxdeploy.engine")

Generator = FastBatchGenerator | SlotGenerator


@dataclass(frozen=True)
class Loop:
    slotted: bool  # mlxdeploy's own loop
    mixes: bool  # prompt chunks read inside decode steps
    prefill_group: int  # most prompts read together

    @classmethod
    def of(cls, model: Any, settings: EngineSettings, distributed: bool) -> Loop:
        name = family(model)
        slotted = kinds(model)
        # Ranks of a distributed model read prompts in calls of their own.
        mixes = slotted and not distributed and name in MIXABLE
        group = 1 if name in UNPADDED else settings.prefill_batch_size
        if settings.kv_bits is not None and _has_sinks(model):
            raise ValueError(
                f"{name} attends with sinks, which mlx-lm's attention on quantized keys does "
                "not take: leave out engine.kv_bits for this model"
            )
        quantization = kv_quantization(settings)
        if slotted and quantization is not None:
            quantization.check(model)
        if not slotted and settings.kv_bits is not None:
            log.warning(
                "%s keeps caches the engine's slots do not hold: engine.kv_bits does not apply "
                "to it, its keys and values stay in full precision",
                name,
            )
        if not slotted:
            log.info(
                "%s keeps caches the engine's slots do not hold: its batches run on mlx-lm's "
                "batch caches, prompts read in calls of their own",
                name,
            )
        elif not mixes:
            log.info("%s reads prompts in calls of their own, between decode steps", name)
        if name in UNPADDED:
            log.info("%s reads each prompt unpadded, in calls of its own", name)
        return cls(slotted, mixes, group)

    def generator(
        self,
        model: Any,
        settings: EngineSettings,
        agree: Callable[[mx.array], mx.array] | None,
        drafter: Drafter | None = None,
    ) -> Generator:
        s = settings
        schedule: dict[str, Any] = {
            "completion_batch_size": s.max_batch_size,
            "prefill_batch_size": self.prefill_group,
            "prefill_step_size": s.prompt_chunk,
            "prefill_wait_steps": s.prefill_wait_steps,
            "agree": agree,
        }
        if self.slotted:
            kv = kv_quantization(s)
            return SlotGenerator(model, mix=self.mixes, kv=kv, drafter=drafter, **schedule)
        stream = mx.default_stream(mx.default_device())
        return FastBatchGenerator(model, stream=stream, **schedule)


def _has_sinks(model: Any) -> bool:
    """Whether any attention layer keeps attention sinks (gpt-oss)."""
    return any(getattr(module, "sinks", None) is not None for _, module in model.named_modules())


def kv_quantization(settings: EngineSettings) -> KVQuantization | None:
    """How the spec keeps a model's keys and values (None: full precision)."""
    if settings.kv_bits is None:
        return None
    return KVQuantization(settings.kv_bits, settings.kv_group_size, settings.quantized_kv_start)
