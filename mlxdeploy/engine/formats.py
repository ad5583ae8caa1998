"""How one model's requests become tokens: its chat template or the spec's role mapping, the
format its tool calls are written in, and how it writes its thinking."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..spec.catalog import ServedModel
from .api import Prompt, PromptRejected, RoleOverride, ToolUse, Turn
from .harmony import HarmonyTokens
from .prompt import encode_chat, system_boundary
from .reasoning import ThinkingFormat, ThinkTags
from .tool_formats import ToolFormat, infer_format, load_format


@dataclass(frozen=True)
class Formats:
    tokenizer: Any
    model: ServedModel
    use_template: bool
    tool_format: ToolFormat | None
    thinking: ThinkingFormat | None

    @classmethod
    def of(cls, tokenizer: Any, model: ServedModel) -> Formats:
        """Raises ValueError (or ImportError) for a spec the tokenizer cannot serve."""
        has_template = bool(getattr(tokenizer, "chat_template", None))
        mode = model.prompt_format
        if mode == "chat_template" and not has_template:
            raise ValueError(
                f"prompt_format is chat_template but model '{model.model}' has no chat "
                "template; set prompt_format: role_mapping"
            )
        use_template = has_template and mode != "role_mapping"
        tool_format: ToolFormat | None = None
        if model.tool_parser is not None:
            tool_format = load_format(model.tool_parser)
        elif use_template:
            tool_format = infer_format(tokenizer)
        thinking = _thinking_format(tokenizer) if use_template else None
        return cls(tokenizer, model, use_template, tool_format, thinking)

    @property
    def name(self) -> str:
        return "chat template" if self.use_template else "role mapping"

    def prepare(
        self,
        turns: Sequence[Turn],
        role_override: RoleOverride | None,
        tools: ToolUse | None = None,
        template_args: Mapping[str, Any] | None = None,
        boundary: bool = False,
    ) -> Prompt:
        """`boundary`: find where the system prompt ends (the prefix cache keeps a snapshot
        there)."""
        if tools is not None:
            self._check_tools(role_override, tools)
        tokens = encode_chat(
            self.tokenizer,
            turns,
            mapping=self.model.role_mapping,
            override=role_override,
            use_template=self.use_template,
            tools=() if tools is None else tools.tools,
            template_args=template_args or {},
        )
        if not tokens:
            raise PromptRejected("the prompt is empty after formatting")
        if not boundary or not self.use_template or role_override is not None:
            return Prompt(tokens)
        use = () if tools is None else tools.tools
        args = template_args or {}
        return Prompt(tokens, system_boundary(self.tokenizer, turns, tokens, use, args))

    def _check_tools(self, role_override: RoleOverride | None, use: ToolUse) -> None:
        """Tools need a chat template that renders them and a format to read calls in."""
        channels = isinstance(self.thinking, HarmonyTokens)  # calls are messages of their own
        if self.tool_format is None and not channels:
            raise PromptRejected(
                f"model '{self.model.id}' has no tool-call format: its chat template does not "
                "render tools; set tool_parser and a chat_template that renders tools in the "
                "spec (e.g. tool_parser: json_tools, chat_template: templates/chatml-tools.jinja)",
                param="tools",
            )
        if not self.use_template or role_override is not None:
            raise PromptRejected(
                f"tools need the chat template, and model '{self.model.id}' is served "
                "with a role mapping here; leave out role_mapping or set prompt_format: auto",
                param="tools",
            )
        if use.choice != "auto" and (self.tool_format is None or self.tool_format.shape is None):
            written = "harmony" if self.tool_format is None else self.tool_format.name
            raise PromptRejected(
                f"tool_choice '{use.choice}' needs a call format that can be constrained "
                f"(json_tools or mistral); model '{self.model.id}' writes calls as "
                f"{written}; send tool_choice auto",
                param="tool_choice",
            )

    def prepare_text(self, text: str) -> Prompt:
        tokens = list(self.tokenizer.encode(text))
        if not tokens:
            raise PromptRejected("the prompt is empty")
        return Prompt(tokens)


def _thinking_format(tokenizer: Any) -> ThinkingFormat | None:
    """How the model writes its thinking: tags (as mlx-lm finds them), gpt-oss's channels."""
    return ThinkTags.of(tokenizer) or HarmonyTokens.of(tokenizer)
