"""Thinking, as every API asks for it: an effort, a budget of thinking tokens, thinking on or
off, and the chat template's own arguments, resolved against the model's `reasoning` settings
into what the engine takes (template arguments and a budget).

A model that does not think takes an effort or a budget as a hint: accepted, noted as unused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..spec.reasoning import Effort, ReasoningSettings
from .errors import InvalidRequest
from .unused import UnusedFields

# gpt-oss's template takes reasoning_effort low, medium or high.
TEMPLATE_EFFORT = {"minimal": "low", "xhigh": "high", "max": "high"}


@dataclass(frozen=True)
class ThinkingAsk:
    """What a request asks of the thinking, each field named by its API (`param`)."""

    effort: Effort | None = None
    budget: int | None = None  # an explicit budget (Anthropic's budget_tokens)
    enabled: bool | None = None  # thinking explicitly on or off
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)
    param: str = "reasoning_effort"  # the field that asked (for notes and errors)
    kwargs_param: str = "chat_template_kwargs"

    @property
    def asked(self) -> bool:
        return self.effort is not None or self.budget is not None or self.enabled is not None


@dataclass(frozen=True)
class Thinking:
    """What the engine takes: the chat template's arguments and the thinking budget."""

    template_args: dict[str, Any]
    budget: int | None


def resolve_thinking(
    ask: ThinkingAsk, settings: ReasoningSettings, thinks: bool, unused: UnusedFields
) -> Thinking:
    """The request's thinking over the model's settings (the request's own fields win)."""
    args = {**settings.template_kwargs, **_allowed(ask, settings)}
    if not thinks:
        if ask.asked:
            unused.decline(ask.param, "the model does not think", "the model does not think")
        return Thinking(args, None)
    effort = ask.effort or (None if ask.enabled else settings.effort)
    if ask.enabled is False or (effort == "none" and ask.budget is None):
        args.setdefault("enable_thinking", False)
        return Thinking(args, 0)
    if ask.enabled:
        args.setdefault("enable_thinking", True)
    if effort is not None and effort != "none":
        args.setdefault("reasoning_effort", TEMPLATE_EFFORT.get(effort, effort))
    budget = ask.budget if ask.budget is not None else _budget(settings, effort)
    return Thinking(args, budget)


def _budget(settings: ReasoningSettings, effort: Effort | None) -> int | None:
    return None if effort is None else settings.budget(effort)


def _allowed(ask: ThinkingAsk, settings: ReasoningSettings) -> dict[str, Any]:
    allowed = settings.request_template_kwargs
    refused = sorted(key for key in ask.template_kwargs if key not in allowed)
    if refused:
        keys = ", ".join(allowed) if allowed else "none"
        raise InvalidRequest(
            f"{ask.kwargs_param}: this deployment does not let requests set {refused}; "
            f"allowed keys: {keys}",
            param=ask.kwargs_param,
        )
    return dict(ask.template_kwargs)
