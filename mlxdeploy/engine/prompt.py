"""Chat messages -> prompt tokens, through the tokenizer's chat template or a role mapping."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..api.errors import InvalidRequest
from ..api.protocol import ChatMessage, RoleMappingOverride
from ..spec.settings import RoleMapping


def merge_role_mapping(base: RoleMapping, override: RoleMappingOverride | None) -> RoleMapping:
    if override is None:
        return base
    fields = override.model_dump(exclude_none=True)
    return base.model_copy(update=fields)


def role_mapped_prompt(messages: Sequence[ChatMessage], mapping: RoleMapping) -> str:
    """mlx-lm's role-mapping format, with `system_prompt` opening a conversation that has no
    system message of its own."""
    prompt = ""
    if mapping.system_prompt and not any(m.role in ("system", "developer") for m in messages):
        prompt += f"{mapping.system_prompt}{mapping.stop}"
    for message in messages:
        role = "system" if message.role == "developer" else message.role
        prefix = getattr(mapping, role, "") if role in ("system", "user", "assistant") else ""
        prompt += f"{prefix}{message.text()}{mapping.stop}"
    prompt += mapping.assistant
    return prompt.rstrip()


def template_prompt(tokenizer: Any, messages: Sequence[ChatMessage]) -> str:
    conversation = [{"role": m.role, "content": m.text()} for m in messages]
    try:
        return str(
            tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        )
    except Exception as exc:  # jinja2 raises for conversations a template rejects
        raise InvalidRequest(
            f"the model's chat template rejected the messages: {exc}", param="messages"
        ) from None


def encode_chat(
    tokenizer: Any,
    messages: Sequence[ChatMessage],
    *,
    mapping: RoleMapping,
    override: RoleMappingOverride | None,
    use_template: bool,
) -> list[int]:
    """A request's own `role_mapping` always selects the role-mapping format."""
    if use_template and override is None:
        text = template_prompt(tokenizer, messages)
        return list(tokenizer.encode(text, add_special_tokens=False))
    text = role_mapped_prompt(messages, merge_role_mapping(mapping, override))
    return list(tokenizer.encode(text))
