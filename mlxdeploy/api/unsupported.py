"""Request fields this server does not implement: a 400 naming the field, never a silent drop.

A request's field is one of four kinds:
- implemented: a field of the request model (checked there, strictly);
- metadata: `IGNORED`, accepted and ignored because it cannot change the answer;
- known but not implemented: a `Rule` in `CHAT` / `TEXT`, accepted only with a value that means
  what this server does anyway (`n: 1`, `echo: false`, `modalities: ["text"]`, ...);
- anything else (an OpenAI field without a rule, a misspelling, another server's extension):
  unknown, always a 400.
JSON null means "not set" for every field that has a rule, as OpenAI's own API treats it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import InvalidRequest

CODE = "unsupported_parameter"
MENTIONED = 8  # a body may have thousands of unknown fields; the message names the first

IGNORED: frozenset[str] = frozenset(
    {
        # OpenAI's CreateChatCompletionRequest / CreateCompletionRequest fields that only label,
        # bill, route or store a request on OpenAI's side; the text generated is the same.
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
    }
)
"""Metadata fields: accepted and ignored on every completion route."""


@dataclass(frozen=True)
class Rule:
    """A field known but not implemented: `accepts` says which values mean this server's
    behaviour anyway; any other value is a 400 with `hint` (what to send instead)."""

    accepts: Callable[[Any], bool]
    hint: str


def _only(*values: Any) -> Callable[[Any], bool]:
    # type(...) is compared too: in Python True == 1 and 1.0 == 1, in JSON they differ.
    return lambda value: any(type(value) is type(v) and value == v for v in values)


def _nothing(value: Any) -> bool:
    return False


def _empty_list(value: Any) -> bool:
    return value == []


def _text_modality(value: Any) -> bool:
    return value == ["text"]


LEGACY_FUNCTIONS = "the deprecated functions API is not supported; send tools and tool_choice"
NOT_SUPPORTED = "this server has no such setting; leave it out"

_SHARED: Mapping[str, Rule] = MappingProxyType(
    {
        # mlx_lm.server extensions this server does not implement.
        "adapters": Rule(_nothing, "LoRA adapters are not supported"),
        "draft_model": Rule(_nothing, "speculative decoding is not supported"),
        "num_draft_tokens": Rule(_nothing, "speculative decoding is not supported"),
    }
)

CHAT: Mapping[str, Rule] = MappingProxyType(
    {
        **_SHARED,
        # The deprecated forms of tools and tool_choice.
        "functions": Rule(_empty_list, LEGACY_FUNCTIONS),
        "function_call": Rule(_only("none", "auto"), LEGACY_FUNCTIONS),
        "modalities": Rule(_text_modality, 'only text is generated; send ["text"]'),
        "audio": Rule(_nothing, "audio output is not supported"),
        "prediction": Rule(_nothing, "predicted outputs are not supported"),
        "web_search_options": Rule(_nothing, "web search is not supported"),
        "reasoning_effort": Rule(_nothing, NOT_SUPPORTED),
        "verbosity": Rule(_nothing, NOT_SUPPORTED),
        "moderation": Rule(_nothing, "moderation is not supported"),
        "chat_template_kwargs": Rule(
            _nothing, "per-request chat template arguments are not supported"
        ),
    }
)
"""Rules for /v1/chat/completions and the preset routes (they take a chat body)."""

TEXT: Mapping[str, Rule] = MappingProxyType(
    {
        **_SHARED,
        "echo": Rule(_only(False), "the prompt is not echoed; send false"),
        "best_of": Rule(_only(1), "only one completion is generated; send best_of=1"),
        "suffix": Rule(_nothing, "insertion (suffix) is not supported; leave suffix out"),
    }
)
"""Rules for /v1/completions."""


def _obfuscation_only(value: Any) -> bool:
    # Obfuscation pads stream events with random characters; the answer is the same.
    return isinstance(value, dict) and set(value) <= {"include_obfuscation"}


RESPONSES: Mapping[str, Rule] = MappingProxyType(
    {
        "truncation": Rule(_only("disabled"), 'the input is never truncated; send "disabled"'),
        "include": Rule(_empty_list, "no extra output data is available; leave include out"),
        "reasoning": Rule(_nothing, "reasoning settings are not supported"),
        "background": Rule(_only(False), "background responses are not supported; send false"),
        "max_tool_calls": Rule(_nothing, "a limit on tool calls is not supported"),
        "top_logprobs": Rule(_only(0), "log-probabilities are not reported here; send 0"),
        "prompt": Rule(_nothing, "stored prompt templates are not supported; send input"),
        "conversation": Rule(_nothing, "conversations are not supported; use previous_response_id"),
        "context_management": Rule(_nothing, NOT_SUPPORTED),
        "stream_options": Rule(_obfuscation_only, "only include_obfuscation is accepted"),
    }
)
"""Rules for /v1/responses (OpenAI's Responses API)."""


def check_fields(data: Any, implemented: Iterable[str], rules: Mapping[str, Rule]) -> None:
    """Raise the 400 for the first field of `data` that would be silently dropped; its
    message names every such field."""
    if not isinstance(data, dict):
        return  # not an object: the model's own validation says so
    known = set(implemented) | IGNORED
    refused = [
        (name, _reason(name, data[name], rules))
        for name in data
        if name not in known and not _accepted(name, data[name], rules)
    ]
    if not refused:
        return
    named = [f"unsupported parameter '{name}': {reason}" for name, reason in refused[:MENTIONED]]
    if len(refused) > MENTIONED:
        named.append(f"and {len(refused) - MENTIONED} more unsupported parameters")
    message = "; ".join(named)
    raise InvalidRequest(message, param=refused[0][0], code=CODE)


def _accepted(name: str, value: Any, rules: Mapping[str, Rule]) -> bool:
    rule = rules.get(name)
    return rule is not None and (value is None or rule.accepts(value))


def _reason(name: str, value: Any, rules: Mapping[str, Rule]) -> str:
    rule = rules.get(name)
    if rule is None:
        return "this server does not implement it; leave it out"
    return rule.hint


def _thinking_off(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == "disabled"


def _anything(value: Any) -> bool:
    return True


LABEL = "accepted as a label"  # never shown: any value is accepted

MESSAGES: Mapping[str, Rule] = MappingProxyType(
    {
        # Hints and labels of Anthropic's service; the text generated is the same.
        "cache_control": Rule(_anything, LABEL),  # prompts are cached here by prefix anyway
        "diagnostics": Rule(_anything, LABEL),
        "speed": Rule(_anything, LABEL),
        "user_profile_id": Rule(_anything, LABEL),
        "workspace_id": Rule(_anything, LABEL),
        "thinking": Rule(
            _thinking_off, 'extended thinking is not supported; send {"type": "disabled"}'
        ),
        "container": Rule(_nothing, "code execution containers are not supported"),
        "mcp_servers": Rule(_nothing, "MCP servers are not supported"),
        "context_management": Rule(_nothing, NOT_SUPPORTED),
        "inference_geo": Rule(_nothing, NOT_SUPPORTED),
    }
)
"""Rules for /v1/messages and /v1/messages/count_tokens (Anthropic's Messages API)."""
