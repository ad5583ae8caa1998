"""The spec's `reasoning` section: how a thinking model's thinking is asked for and bounded.

Requests ask for thinking in each API's own words (`reasoning_effort`, `reasoning.effort`,
`output_config.effort`, `thinking.budget_tokens`); here an effort becomes a budget of thinking
tokens, and the spec decides which chat template arguments a request may set."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr

from .formats import Section

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
EFFORTS: tuple[Effort, ...] = ("none", "minimal", "low", "medium", "high", "xhigh", "max")

DEFAULT_BUDGETS: dict[Effort, int | None] = {
    "none": 0,
    "minimal": 256,
    "low": 1024,
    "medium": 4096,
    "high": 16384,
    "xhigh": 32768,
    "max": None,
}
# Template arguments a request may set in chat_template_kwargs unless the spec says otherwise:
# the thinking switches of Qwen3 / DeepSeek / GLM templates and gpt-oss's effort.
REQUEST_TEMPLATE_KWARGS = ("enable_thinking", "thinking", "reasoning_effort")


class ReasoningSettings(Section):
    """Thinking models: the default effort, the thinking budget of each effort, and the chat
    template arguments. Models that do not think accept an effort as a hint and ignore it."""

    effort: Effort | None = Field(
        default=None,
        description=(
            "The effort of a request that names none; null: the model thinks as long as it "
            "wants (up to max_tokens)."
        ),
    )
    budgets: dict[Effort, int | None] = Field(
        default=DEFAULT_BUDGETS,
        description=(
            "Most thinking tokens of each effort; past them the thinking is closed and the "
            "answer follows. null: no bound but max_tokens. Keys set here replace the "
            "defaults' (none 0, minimal 256, low 1024, medium 4096, high 16384, xhigh 32768, "
            "max null)."
        ),
    )
    template_kwargs: dict[str, Any] = Field(
        default={},
        description=(
            "Arguments passed to the chat template with every request, e.g. "
            "{enable_thinking: false}; a request's allowed chat_template_kwargs win."
        ),
    )
    request_template_kwargs: list[str] = Field(
        default=list(REQUEST_TEMPLATE_KWARGS),
        description=(
            "The chat_template_kwargs keys a request may set; any other key is a 400. "
            "[] refuses them all."
        ),
    )
    seal_key: SecretStr | None = Field(
        default=None,
        min_length=16,
        description=(
            "The key that seals the thinking given to clients (Responses "
            "encrypted_content, Messages thinking signatures), so it comes back unaltered; "
            "set it (e.g. ${MLXDEPLOY_SEAL_KEY}) for sealed thinking that survives restarts "
            "and is shared by replicas; null: a new key each start."
        ),
    )

    def budget(self, effort: Effort) -> int | None:
        budgets: dict[Effort, int | None] = {**DEFAULT_BUDGETS, **self.budgets}
        return budgets[effort]
