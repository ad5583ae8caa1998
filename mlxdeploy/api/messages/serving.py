"""Serving Anthropic's Messages API: POST /v1/messages (whole or streamed with Anthropic's
events) and POST /v1/messages/count_tokens. Errors on these routes take Anthropic's shape
(`errors.error_response`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from quart import Response

from ...engine.api import (
    Finished,
    Prompt,
    Reasoning,
    Text,
    ToolCall,
    ToolCallArguments,
    ToolCallStarted,
    ToolUse,
    Turn,
)
from ..answer import Answer
from ..errors import GenerationFailed, json_response
from ..guards.body import parse_body
from ..reasoning import Thinking
from ..routing import Target, Targets
from ..serving import Generation, complete, read_prompt, stream_one
from ..sse import event_stream, typed_event
from ..wire import Usage, new_id
from .wire import (
    Conversation,
    Message,
    MessagesRequest,
    MessageUsage,
    OutputText,
    OutputThinking,
    OutputTokensDetails,
    OutputToolUse,
    TokenCount,
    stop_reason,
)


async def create_message(generation: Generation, targets: Targets) -> Response:
    body = await parse_body(MessagesRequest)
    target = await targets.resolve(body.model)
    turns = body.turns(target.sealer.open)
    tools = target.tool_use(body.tool_use(), turns)
    thinking = target.thinking(body.thinking_ask())
    prepare = _preparer(target, body, tools, thinking, turns)
    run = await generation.start(target, body.sampling(), prepare, "messages", tools, thinking)
    seal = target.sealer.seal
    draft = Draft(target.id, body.stop_sequences, len(run.prompt.tokens), seal, body.thinking_shown)
    if body.stream:
        return event_stream(stream_one(run, MessageEvents(draft)))
    return json_response(await complete(run, draft))


async def count_tokens(targets: Targets) -> Response:
    body = await parse_body(Conversation)
    target = await targets.resolve(body.model)
    thinking = target.thinking(body.thinking_ask())
    prepare = _preparer(target, body, body.tool_use(), thinking)
    prompt = await read_prompt(prepare, "messages")
    return json_response(TokenCount(input_tokens=len(prompt.tokens)))


def _preparer(
    target: Target,
    body: Conversation,
    tools: ToolUse | None,
    thinking: Thinking,
    turns: list[Turn] | None = None,
) -> Callable[[], Prompt]:
    target.check_text_only(body.media())
    turns = target.turns(body.turns(target.sealer.open) if turns is None else turns, None)

    def prepare() -> Prompt:  # in a thread, once admitted: presets render templates here
        return target.engine.prepare(turns, None, tools, thinking.template_args)

    return prepare


Block = OutputThinking | OutputText | OutputToolUse


def tool_use_block(call: ToolCall) -> OutputToolUse:
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise GenerationFailed(
            f"the model's call of {call.name} has arguments that are not a JSON object: "
            f"{call.arguments[:200]!r}"
        )
    return OutputToolUse(id=anthropic_id(call.id), name=call.name, input=arguments)


def anthropic_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


@dataclass
class Draft:
    """A message's identity and what the request decides of it (the `Assembler` of the whole
    answer)."""

    model: str
    stop_sequences: list[str] | None
    input_tokens: int
    seal: Callable[[str], str] = str  # signs the thinking shown
    shows_thinking: bool = True  # False: thinking blocks carry their signature only
    id: str = field(default_factory=lambda: new_id("msg"))

    def thinking_block(self, thought: str) -> OutputThinking:
        shown = thought if self.shows_thinking else ""
        return OutputThinking(thinking=shown, signature=self.seal(thought))

    def build(self, content: Sequence[Block], finished: Finished | None) -> Message:
        reason, word = (
            (None, None) if finished is None else stop_reason(finished, self.stop_sequences)
        )
        return Message(
            id=self.id,
            content=list(content),
            model=self.model,
            stop_reason=reason,
            stop_sequence=word,
            usage=self.usage(finished),
        )

    def usage(self, finished: Finished | None) -> MessageUsage:
        if finished is None:
            return MessageUsage(input_tokens=self.input_tokens, output_tokens=0)
        return MessageUsage(  # Anthropic counts cached prompt tokens apart from input_tokens
            input_tokens=finished.prompt_tokens - finished.cached_tokens,
            output_tokens=finished.completion_tokens,
            output_tokens_details=OutputTokensDetails(thinking_tokens=finished.reasoning_tokens),
            cache_read_input_tokens=finished.cached_tokens,
        )

    def whole(self, answers: Sequence[Answer], usage: Usage) -> Message:
        answer = answers[0]
        thought = answer.reasoning
        thinking = [] if thought is None else [self.thinking_block(thought)]
        text = [OutputText(text=answer.text)] if answer.text else []
        calls = [tool_use_block(call) for call in answer.tool_calls]
        return self.build([*thinking, *text, *calls], answer.finished)


@dataclass
class MessageEvents:
    """The Messages API's stream of one answer (`Renderer`): message_start, each content
    block started, filled and stopped (a ping after the first start), message_delta with the
    stop reason and usage, message_stop."""

    draft: Draft
    index: int = -1  # the open block's
    open: str | None = None  # its type: "thinking", "text" or "tool_use"
    pinged: bool = False
    thoughts: list[str] = field(default_factory=list)  # the open thinking block's

    def reasoning(self, event: Reasoning) -> list[str]:
        opened = OutputThinking(thinking="", signature="")  # its signature_delta comes last
        out = [] if self.open == "thinking" else self._start(opened.model_dump())
        self.thoughts.append(event.text)
        if not self.draft.shows_thinking:
            return out
        return out + [self._delta({"type": "thinking_delta", "thinking": event.text})]

    def opening(self) -> list[str]:
        shell = self.draft.build([], None)
        return [typed_event("message_start", {"message": shell.model_dump()})]

    def keep_alive(self) -> str:
        return typed_event("ping", {})

    def text(self, event: Text) -> list[str]:
        out = [] if self.open == "text" else self._start(OutputText(text="").model_dump())
        delta = {"type": "text_delta", "text": event.text}
        return out + [self._delta(delta)]

    def call(self, event: ToolCallStarted | ToolCallArguments) -> list[str]:
        if isinstance(event, ToolCallStarted):
            block = OutputToolUse(id=anthropic_id(event.id), name=event.name, input={})
            return self._start(block.model_dump())
        return [self._delta({"type": "input_json_delta", "partial_json": event.text})]

    def finished(self, event: Finished) -> list[str]:
        reason, word = stop_reason(event, self.draft.stop_sequences)
        usage = self.draft.usage(event).model_dump(
            include={
                "input_tokens",
                "output_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
                "output_tokens_details",
                "server_tool_use",
            }
        )
        delta = {
            "stop_reason": reason,
            "stop_sequence": word,
            "stop_details": None,
            "container": None,
        }
        return self._stop() + [
            typed_event("message_delta", {"delta": delta, "usage": usage}),
            typed_event("message_stop", {}),
        ]

    def failed(self, message: str) -> list[str]:
        return [typed_event("error", {"error": {"type": "api_error", "message": message}})]

    def _start(self, block: dict[str, Any]) -> list[str]:
        out = self._stop()
        self.index += 1
        self.open = block["type"]
        out.append(
            typed_event("content_block_start", {"index": self.index, "content_block": block})
        )
        if not self.pinged:
            self.pinged = True
            out.append(typed_event("ping", {}))
        return out

    def _delta(self, delta: dict[str, Any]) -> str:
        return typed_event("content_block_delta", {"index": self.index, "delta": delta})

    def _stop(self) -> list[str]:
        if self.open is None:
            return []
        out = []
        if self.open == "thinking":  # the signature seals the whole thinking, so it comes last
            signature = self.draft.seal("".join(self.thoughts))
            out.append(self._delta({"type": "signature_delta", "signature": signature}))
        self.open, self.thoughts = None, []
        return out + [typed_event("content_block_stop", {"index": self.index})]
