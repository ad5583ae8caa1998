"""Chat turns -> prompt tokens, through the tokenizer's chat template or a role mapping."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from types import MappingProxyType
from typing import Any

from ..spec.settings import RoleMapping
from .api import SYSTEM_ROLES, PromptRejected, RoleOverride, Tool, Turn, has_system_turn


def merge_role_mapping(base: RoleMapping, override: RoleOverride | None) -> RoleMapping:
    if override is None:
        return base
    fields = {key: value for key, value in asdict(override).items() if value is not None}
    return base.model_copy(update=fields)


def role_mapped_prompt(turns: Sequence[Turn], mapping: RoleMapping) -> str:
    """mlx-lm's role-mapping format, with `system_prompt` opening a conversation that has no
    system message of its own."""
    prompt = ""
    if mapping.system_prompt and not has_system_turn(turns):
        prompt += f"{mapping.system_prompt}{mapping.stop}"
    for turn in turns:
        role = "system" if turn.role == "developer" else turn.role
        prefix = getattr(mapping, role, "") if role in ("system", "user", "assistant") else ""
        prompt += f"{prefix}{turn.content}{mapping.stop}"
    prompt += mapping.assistant
    return prompt.rstrip()


def template_prompt(
    tokenizer: Any,
    turns: Sequence[Turn],
    tools: Sequence[Tool] = (),
    template_args: Mapping[str, Any] = MappingProxyType({}),
    generation_prompt: bool = True,
) -> str:
    """The conversation through the chat template, as transformers' apply_chat_template(...,
    tools=...) expects it: tool definitions, assistant calls with their arguments as objects,
    tool results with the id of the call they answer, and an assistant turn's thinking (as
    `reasoning_content`, Qwen's name, and `thinking`, gpt-oss's). `template_args` are the
    template's own variables (enable_thinking, reasoning_effort, ...)."""
    template = getattr(tokenizer, "chat_template", None)
    knows_developer = isinstance(template, str) and "developer" in template
    extra: dict[str, Any] = {**template_args}
    if tools:
        extra["tools"] = tool_dicts(tools)
    try:
        conversation = [_message(t, knows_developer) for t in turns]
        text = _render(tokenizer, conversation, extra, generation_prompt)
        if not _lost(turns, text):
            return text
    except Exception as exc:  # jinja2 raises for conversations a template rejects
        if not _later_system_turns(turns):
            raise PromptRejected(
                f"the model's chat template rejected the messages: {exc}"
            ) from None
    # The template refused a system message after the first, or left it out: it reaches the
    # model as a user message instead (joined to the user message after it).
    folded = [_message(t, knows_developer) for t in fold_system_turns(turns)]
    try:
        return _render(tokenizer, folded, extra, generation_prompt)
    except Exception as exc:
        raise PromptRejected(f"the model's chat template rejected the messages: {exc}") from None


def _render(
    tokenizer: Any, conversation: list[dict[str, Any]], extra: dict[str, Any], prompt: bool = True
) -> str:
    text = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=prompt, tokenize=False, **extra
    )
    return str(text)


def _later_system_turns(turns: Sequence[Turn]) -> list[Turn]:
    return [t for t in turns[1:] if t.role in ("system", "developer") and t.content]


def _lost(turns: Sequence[Turn], text: str) -> bool:
    """Whether the template left out a system message after the first (some render the
    first system message only)."""
    return any(turn.content not in text for turn in _later_system_turns(turns))


def fold_system_turns(turns: Sequence[Turn]) -> list[Turn]:
    """System and developer turns after the first as user turns, each joined to the user turn
    that follows it (templates that alternate roles refuse two user turns in a row)."""
    out: list[Turn] = []
    pending: list[str] = []
    for index, turn in enumerate(turns):
        if index and turn.role in ("system", "developer"):
            pending.append(turn.content)
            continue
        if pending and turn.role == "user":
            turn = Turn("user", "\n\n".join([*pending, turn.content]))
            pending = []
        elif pending:
            out.append(Turn("user", "\n\n".join(pending)))
            pending = []
        out.append(turn)
    if pending:
        out.append(Turn("user", "\n\n".join(pending)))
    return out


def _message(turn: Turn, knows_developer: bool = True) -> dict[str, Any]:
    """A turn as a template reads it; a developer message is a system message to a template
    that does not name the developer role (it would render nothing for it)."""
    role = "system" if turn.role == "developer" and not knows_developer else turn.role
    message: dict[str, Any] = {"role": role, "content": turn.content}
    if turn.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments(call.arguments)},
            }
            for call in turn.tool_calls
        ]
    if turn.tool_call_id is not None:
        message["tool_call_id"] = turn.tool_call_id
    if turn.name is not None:
        message["name"] = turn.name
    if turn.reasoning:
        message["reasoning_content"] = message["thinking"] = turn.reasoning
    return message


def _arguments(text: str) -> Any:
    """Templates render arguments as an object (`| tojson`); text that is not JSON stays
    text, as the client sent it."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def tool_dicts(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """The tools as transformers' chat templates and mlx-lm's tool parsers read them."""
    return [_tool(tool) for tool in tools]


def _tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": json.loads(tool.parameters)}
    if tool.description is not None:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def system_boundary(
    tokenizer: Any,
    turns: Sequence[Turn],
    tokens: Sequence[int],
    tools: Sequence[Tool] = (),
    template_args: Mapping[str, Any] = MappingProxyType({}),
) -> int:
    """Where the conversation's system prompt ends in `tokens` (its template-rendered prompt):
    the tokens it shares with the system turns followed by an empty user message (as
    mlx_lm.server finds it); 0 when the conversation opens with no system turn or does not end
    with the user's."""
    leading = 0
    while leading < len(turns) and turns[leading].role in SYSTEM_ROLES:
        leading += 1
    if not leading or turns[-1].role != "user":
        return 0
    probe = [*turns[:leading], Turn("user", "")]
    try:
        text = template_prompt(tokenizer, probe, tools, template_args, generation_prompt=False)
    except PromptRejected:
        return 0
    shared = 0
    for a, b in zip(tokenizer.encode(text, add_special_tokens=False), tokens, strict=False):
        if a != b:
            break
        shared += 1
    return shared if 0 < shared < len(tokens) else 0


def encode_chat(
    tokenizer: Any,
    turns: Sequence[Turn],
    *,
    mapping: RoleMapping,
    override: RoleOverride | None,
    use_template: bool,
    tools: Sequence[Tool] = (),
    template_args: Mapping[str, Any] = MappingProxyType({}),
) -> list[int]:
    """A request's own `role_mapping` always selects the role-mapping format."""
    if use_template and override is None:
        text = template_prompt(tokenizer, turns, tools, template_args)
        return list(tokenizer.encode(text, add_special_tokens=False))
    text = role_mapped_prompt(turns, merge_role_mapping(mapping, override))
    return list(tokenizer.encode(text))
