"""Serving OpenAI's Responses API: POST /v1/responses (whole or streamed with its typed
events), and GET / DELETE /v1/responses/{id} on the responses kept in memory."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from quart import Response

from ...engine.api import (
    Finished,
    Prompt,
    Reasoning,
    Text,
    ToolCallArguments,
    ToolCallStarted,
    Turn,
)
from ..answer import Answer
from ..errors import InvalidRequest, NotFound, json_response
from ..guards.body import parse_body
from ..routing import Targets
from ..serving import Generation, complete, stream_one
from ..sse import KEEP_ALIVE, event_stream, typed_event
from ..wire import Usage, new_id, now, usage_of
from .store import ResponseStore, Stored
from .wire import (
    DeletedResponse,
    IncompleteDetails,
    NamedFunction,
    OfferedTool,
    OutputCall,
    OutputCustomCall,
    OutputItem,
    OutputMessage,
    OutputReasoning,
    OutputReasoningText,
    OutputSummary,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponseRequest,
    ResponseUsage,
    custom_input,
    turns_of,
)

Ending = Literal["completed", "incomplete"]


def ending(finished: Finished) -> Ending:
    """A finished answer's status: incomplete when it ran into max_output_tokens."""
    return "incomplete" if finished.reason == "length" else "completed"


async def create_response(
    generation: Generation, targets: Targets, store: ResponseStore
) -> Response:
    body = await parse_body(ResponseRequest)
    target = await targets.resolve(body.model)
    target.check_text_only(body.media())
    conversation = (*_history(store, body.previous_response_id), *body.items())
    turns = [Turn("system", body.instructions)] if body.instructions else []
    turns += turns_of(list(conversation), target.sealer.open)
    tools = target.tool_use(body.tool_use(), turns)
    thinking = target.thinking(body.thinking())

    def prepare() -> Prompt:  # in a thread, once admitted: presets render templates here
        return target.engine.prepare(target.turns(turns, None), None, tools, thinking.template_args)

    run = await generation.start(target, body.sampling(), prepare, "input", tools, thinking)
    p = run.params
    draft = Draft(body, target.id, p.temperature, p.top_p, p.max_tokens, target.sealer.seal)
    keep = _keeper(store, body.store, conversation)
    if body.stream:
        return event_stream(stream_one(run, ResponseEvents(draft, keep)))
    response = await complete(run, draft)
    assert isinstance(response, ResponseObject)
    keep(response)
    return json_response(response)


async def get_response(store: ResponseStore, response_id: str) -> Response:
    return json_response(_stored(store, response_id).response)


async def delete_response(store: ResponseStore, response_id: str) -> Response:
    if not store.delete(response_id):
        raise _not_stored(response_id)
    return json_response(DeletedResponse(id=response_id))


def _stored(store: ResponseStore, response_id: str) -> Stored:
    stored = store.get(response_id)
    if stored is None:
        raise _not_stored(response_id)
    return stored


def _not_stored(response_id: str) -> NotFound:
    return NotFound(
        f"no response with id '{response_id}' is stored here (responses are kept in memory "
        "until restart, up to limits.stored_responses)",
        param="response_id",
    )


def _history(store: ResponseStore, previous: str | None) -> tuple[Any, ...]:
    if previous is None:
        return ()
    stored = store.get(previous)
    if stored is None:
        raise InvalidRequest(
            f"previous response with id '{previous}' not found (responses are kept in memory "
            "until restart, up to limits.stored_responses; one sent with store: false is not)",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return stored.conversation


def _keeper(
    store: ResponseStore, wanted: bool, conversation: tuple[Any, ...]
) -> Callable[[ResponseObject], None]:
    def keep(response: ResponseObject) -> None:
        if wanted:
            outputs = tuple(item.as_input() for item in response.output)
            store.put(Stored(response, (*conversation, *outputs)))

    return keep


@dataclass
class Draft:
    """A response's fields that the request decides, and the response once its output is
    known (also the `Assembler` of the whole answer)."""

    body: ResponseRequest
    model: str
    temperature: float
    top_p: float
    max_output_tokens: int
    seal: Callable[[str], str] = str  # seals the thinking (encrypted_content)
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=now)

    @functools.cached_property
    def offers(self) -> dict[str, OfferedTool]:
        """The tools as the model names them, for mapping its calls back."""
        return {offer.tool.name: offer for offer in self.body.offered_tools()}

    def reasoning_item(self, item_id: str, thought: str, status: Ending) -> OutputReasoning:
        summary = [OutputSummary(text=thought)] if self.body.summarized else []
        sealed = self.seal(thought) if self.body.sealed_thinking else None
        content = [OutputReasoningText(text=thought)]
        return OutputReasoning(
            id=item_id, summary=summary, content=content, encrypted_content=sealed, status=status
        )

    def custom(self, name: str) -> bool:
        """Whether the model's function `name` is a custom tool (its input is text)."""
        offer = self.offers.get(name)
        return offer is not None and offer.custom

    def call_item(
        self, item_id: str, call_id: str, name: str, arguments: str, done: bool = True
    ) -> OutputItem:
        """A call as the client named its tool: a custom tool's with its text input."""
        offer = self.offers.get(name)
        if offer is None or not offer.custom:
            client = name if offer is None else offer.name
            namespace = None if offer is None else offer.namespace
            return OutputCall(
                id=item_id, call_id=call_id, name=client, arguments=arguments,
                status="completed" if done else "in_progress", namespace=namespace,
            )  # fmt: skip
        return OutputCustomCall(
            id=item_id, call_id=call_id, name=offer.name, input=custom_input(arguments),
            status="completed", namespace=offer.namespace,
        )  # fmt: skip

    def build(
        self,
        status: str,
        output: Sequence[OutputItem] = (),
        usage: ResponseUsage | None = None,
        error: str | None = None,
    ) -> ResponseObject:
        body = self.body
        tools = [_echo(tool.model_dump()) for tool in body.tools or []]
        choice = body.tool_choice
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,  # type: ignore[arg-type]
            error=None if error is None else ResponseError(message=error),
            incomplete_details=IncompleteDetails() if status == "incomplete" else None,
            instructions=body.instructions,
            max_output_tokens=self.max_output_tokens,
            model=self.model,
            output=list(output),
            parallel_tool_calls=body.parallel_tool_calls is not False,
            previous_response_id=body.previous_response_id,
            temperature=self.temperature,
            top_p=self.top_p,
            tool_choice=choice.model_dump()
            if isinstance(choice, NamedFunction)
            else choice or "auto",
            tools=tools,
            text={"format": body.format().model_dump(by_alias=True, exclude_none=True)},
            usage=usage,
            metadata=body.metadata or {},
        )

    def finish(self, output: Sequence[OutputItem], finished: Finished) -> ResponseObject:
        return self.build(ending(finished), output, ResponseUsage.of(usage_of([finished])))

    def whole(self, answers: Sequence[Answer], usage: Usage) -> ResponseObject:
        answer = answers[0]
        assert answer.finished is not None
        done = ending(answer.finished)
        calls = [self.call_item(new_id("fc"), c.id, c.name, c.arguments) for c in answer.tool_calls]
        output: list[OutputItem] = []
        if answer.reasoning is not None:
            output.append(self.reasoning_item(new_id("rs"), answer.reasoning, done))
        if answer.text or not calls:
            text = OutputText(text=answer.text)
            output.append(OutputMessage(id=new_id("msg"), status=done, content=[text]))
        return self.finish([*output, *calls], answer.finished)


def _echo(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool as the response echoes it: hints it did not send are left out."""
    return {k: v for k, v in tool.items() if not (k == "defer_loading" and v is None)}


@dataclass
class ResponseEvents:
    """The Responses API's stream of one answer (`Renderer`): every event numbered, each
    output item opened, filled and closed, then the whole response once more."""

    draft: Draft
    keep: Callable[[ResponseObject], None]
    output: list[OutputItem] = field(default_factory=list)
    open: OutputMessage | OutputCall | OutputReasoning | None = None
    pieces: list[str] = field(default_factory=list)  # the open item's text or arguments
    sequence: int = 0

    def reasoning(self, event: Reasoning) -> list[str]:
        out = [] if isinstance(self.open, OutputReasoning) else self._open_reasoning()
        assert self.open is not None
        self.pieces.append(event.text)
        ids = {"item_id": self.open.id, "output_index": len(self.output)}
        if self.draft.body.summarized:
            kind, where = "response.reasoning_summary_text.delta", {"summary_index": 0}
        else:
            kind, where = "response.reasoning_text.delta", {"content_index": 0}
        return out + [self._event(kind, **ids, **where, delta=event.text)]

    def _open_reasoning(self) -> list[str]:
        out = self._close()
        self.open = OutputReasoning(id=new_id("rs"), summary=[], status="in_progress")
        index = len(self.output)
        out.append(
            self._event(
                "response.output_item.added", output_index=index, item=self.open.model_dump()
            )
        )
        if self.draft.body.summarized:
            part = OutputSummary(text="").model_dump()
            ids = {"item_id": self.open.id, "output_index": index, "summary_index": 0}
            out.append(self._event("response.reasoning_summary_part.added", **ids, part=part))
        return out

    def opening(self) -> list[str]:
        shell = self.draft.build("in_progress").model_dump()
        return [
            self._event("response.created", response=shell),
            self._event("response.in_progress", response=shell),
        ]

    def keep_alive(self) -> str:
        return KEEP_ALIVE

    def text(self, event: Text) -> list[str]:
        out = [] if isinstance(self.open, OutputMessage) else self._close() + self._open_message()
        assert self.open is not None
        self.pieces.append(event.text)
        return out + [
            self._event(
                "response.output_text.delta",
                item_id=self.open.id,
                output_index=len(self.output),
                content_index=0,
                delta=event.text,
                logprobs=[],
            )
        ]

    def call(self, event: ToolCallStarted | ToolCallArguments) -> list[str]:
        if isinstance(event, ToolCallStarted):
            out = self._close()
            if self.draft.custom(event.name):  # its input comes whole, when it closes
                self.open = OutputCall(
                    id=new_id("ctc"), call_id=event.id, name=event.name, arguments="",
                    status="in_progress",
                )  # fmt: skip
                return out
            self.open = OutputCall(
                id=new_id("fc"),
                call_id=event.id,
                name=event.name,
                arguments="",
                status="in_progress",
            )
            shown = self.draft.call_item(self.open.id, event.id, event.name, "", done=False)
            added = self._event(
                "response.output_item.added", output_index=len(self.output), item=shown.model_dump()
            )
            return out + [added]
        assert isinstance(self.open, OutputCall)
        self.pieces.append(event.text)
        if self.draft.custom(self.open.name):
            return []
        return [
            self._event(
                "response.function_call_arguments.delta",
                item_id=self.open.id,
                output_index=len(self.output),
                delta=event.text,
            )
        ]

    def finished(self, event: Finished) -> list[str]:
        status = ending(event)
        out = [] if self.open or self.output else self._open_message()
        out += self._close(status)
        response = self.draft.finish(self.output, event)
        self.keep(response)
        return out + [self._event(f"response.{status}", response=response.model_dump())]

    def failed(self, message: str) -> list[str]:
        response = self.draft.build("failed", self.output, error=message)
        return [self._event("response.failed", response=response.model_dump())]

    def _open_message(self) -> list[str]:
        self.open = OutputMessage(id=new_id("msg"), status="in_progress", content=[])
        index = len(self.output)
        return [
            self._event(
                "response.output_item.added", output_index=index, item=self.open.model_dump()
            ),
            self._event(
                "response.content_part.added",
                item_id=self.open.id,
                output_index=index,
                content_index=0,
                part=OutputText(text="").model_dump(),
            ),
        ]

    def _close(self, status: Ending = "completed") -> list[str]:
        """The open item's closing events; the item joins the output."""
        item, joined, index = self.open, "".join(self.pieces), len(self.output)
        if item is None:
            return []
        self.open, self.pieces = None, []
        out: list[str] = []
        done: OutputItem
        if isinstance(item, OutputReasoning):
            done = self.draft.reasoning_item(item.id, joined, status)
            out += self._reasoning_done(item.id, index, joined)
        elif isinstance(item, OutputCall) and self.draft.custom(item.name):
            done = self.draft.call_item(item.id, item.call_id, item.name, joined)
            assert isinstance(done, OutputCustomCall)
            out.append(
                self._event(
                    "response.output_item.added",
                    output_index=index,
                    item={**done.model_dump(), "input": "", "status": "in_progress"},
                )
            )
            ids = {"item_id": item.id, "output_index": index}
            out.append(
                self._event("response.custom_tool_call_input.delta", **ids, delta=done.input)
            )
            out.append(self._event("response.custom_tool_call_input.done", **ids, input=done.input))
        elif isinstance(item, OutputMessage):
            part = OutputText(text=joined)
            done = OutputMessage(id=item.id, status=status, content=[part])
            ids = {"item_id": item.id, "output_index": index, "content_index": 0}
            out.append(self._event("response.output_text.done", **ids, text=joined, logprobs=[]))
            out.append(self._event("response.content_part.done", **ids, part=part.model_dump()))
        else:
            done = self.draft.call_item(item.id, item.call_id, item.name, joined)
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=index,
                    name=item.name,
                    arguments=joined,
                )
            )
        self.output.append(done)
        out.append(
            self._event("response.output_item.done", output_index=index, item=done.model_dump())
        )
        return out

    def _reasoning_done(self, item_id: str, index: int, text: str) -> list[str]:
        ids = {"item_id": item_id, "output_index": index}
        if not self.draft.body.summarized:
            return [self._event("response.reasoning_text.done", **ids, content_index=0, text=text)]
        part = OutputSummary(text=text).model_dump()
        return [
            self._event("response.reasoning_summary_text.done", **ids, summary_index=0, text=text),
            self._event("response.reasoning_summary_part.done", **ids, summary_index=0, part=part),
        ]

    def _event(self, kind: str, **payload: Any) -> str:
        event = typed_event(kind, {**payload, "sequence_number": self.sequence})
        self.sequence += 1
        return event
