"""A whole answer, collected from a generation's events: the text and the tool calls, joined
from the same pieces a stream sends, so the two never differ."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine.api import (
    Finished,
    Reasoning,
    Text,
    TokenLogprob,
    ToolCall,
    ToolCallArguments,
    ToolCallStarted,
)


@dataclass
class _Call:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


@dataclass
class Answer:
    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # the text's tokens, when asked
    _calls: list[_Call] = field(default_factory=list)
    finished: Finished | None = None  # how the choice ended, once it has
    thoughts: list[str] = field(default_factory=list)  # a thinking model's thinking

    def add(self, event: Text | Reasoning | ToolCallStarted | ToolCallArguments) -> None:
        if isinstance(event, Reasoning):
            self.thoughts.append(event.text)
        elif isinstance(event, Text):
            self.parts.append(event.text)
            self.logprobs.extend(event.logprobs)
        elif isinstance(event, ToolCallStarted):
            self._calls.append(_Call(event.id, event.name))
        else:
            self._calls[event.index].arguments.append(event.text)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def reasoning(self) -> str | None:
        """The thinking, or None when the model did not think."""
        return "".join(self.thoughts) if self.thoughts else None

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [ToolCall(c.id, c.name, "".join(c.arguments)) for c in self._calls]
