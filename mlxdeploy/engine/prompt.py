"""Chat turns -> prompt tokens, through the tokenizer's chat template or a role mapping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from ..spec.settings import RoleMapping
from .api import PromptRejected, RoleOverride, Turn, has_system_turn


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


def template_prompt(tokenizer: Any, turns: Sequence[Turn]) -> str:
    conversation = [{"role": turn.role, "content": turn.content} for turn in turns]
    try:
        return str(
            tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        )
    except Exception as exc:  # jinja2 raises for conversations a template rejects
        raise PromptRejected(f"the model's chat template rejected the messages: {exc}") from None


def encode_chat(
    tokenizer: Any,
    turns: Sequence[Turn],
    *,
    mapping: RoleMapping,
    override: RoleOverride | None,
    use_template: bool,
) -> list[int]:
    """A request's own `role_mapping` always selects the role-mapping format."""
    if use_template and override is None:
        text = template_prompt(tokenizer, turns)
        return list(tokenizer.encode(text, add_special_tokens=False))
    text = role_mapped_prompt(turns, merge_role_mapping(mapping, override))
    return list(tokenizer.encode(text))
