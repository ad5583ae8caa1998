"""Request fields this server does not implement, judged before a wire model validates: a field
that would change the answer is a 400 naming it, never a silent drop; a field that only labels,
or only hints, is accepted and named as unused (`unused.py`).

A request's field is one of five kinds:
- implemented: a field of the request model (checked there, strictly);
- a label (`LABEL` rules, `METADATA` on every route): it labels, bills, routes or caches the
  request on another service's side, and cannot change the text generated. Accepted and noted
  as unused;
- a hint (`HINT` rules): a hint, or an offer the model may decline (`prediction`, `verbosity`,
  a hosted search). Values that mean what this server does anyway pass
  (`truncation: "disabled"`); any other is accepted and noted as unused, or, under
  `limits.unused_fields: reject`, a 400 (the refusal says what is not supported);
- changes the answer (`ANSWER` rules): accepted only with a value that means what this server
  does anyway (`n: 1`, `echo: false`, `modalities: ["text"]`, ...); any other is a 400 under
  either policy;
- anything else (a field without a rule, a misspelling, another server's extension): unknown,
  always a 400: a misspelt `temprature` must not pass as a hint.
JSON null means "not set" for every field that has a rule, as OpenAI's own API treats it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from pydantic import ValidationInfo

from .errors import InvalidRequest
from .unused import unused_of

CODE = "unsupported_parameter"
MENTIONED = 8  # a body may have thousands of unknown fields; the message names the first

Kind = Literal["answer", "hint", "label"]
ANSWER: Kind = "answer"
HINT: Kind = "hint"
LABEL: Kind = "label"


@dataclass(frozen=True)
class Rule:
    """A field known but not implemented: `accepts` says which values mean this server's
    behaviour anyway; any other value is a 400 saying `refusal` (what to send instead), or,
    for a hint or a label, accepted and noted as unused (see the module's docstring)."""

    accepts: Callable[[Any], bool]
    refusal: str
    kind: Kind = ANSWER


def _only(*values: Any) -> Callable[[Any], bool]:
    # type(...) is compared too: in Python True == 1 and 1.0 == 1, in JSON they differ.
    return lambda value: any(type(value) is type(v) and value == v for v in values)


def _nothing(value: Any) -> bool:
    return False


def _empty_list(value: Any) -> bool:
    return value == []


def _text_modality(value: Any) -> bool:
    return value == ["text"]


def _label() -> Rule:
    return Rule(_nothing, "accepted as a label", LABEL)  # the refusal is never shown


def _hint(refusal: str, accepts: Callable[[Any], bool] = _nothing) -> Rule:
    return Rule(accepts, refusal, HINT)


METADATA: Mapping[str, Rule] = MappingProxyType(
    {
        # OpenAI's request fields that only label, bill, route or cache a request on OpenAI's
        # side (prompts are cached here by prefix anyway); the text generated is the same.
        name: _label()
        for name in (
            "user",
            "metadata",
            "store",
            "service_tier",
            "safety_identifier",
            "prompt_cache_key",
            "prompt_cache_retention",
            "prompt_cache_options",
        )
    }
)
"""Labels accepted on every completion route, unless the route implements the field."""

LEGACY_FUNCTIONS = "the deprecated functions API is not supported; send tools and tool_choice"
NOT_SUPPORTED = "this server has no such setting; leave it out"
_SHARED: Mapping[str, Rule] = MappingProxyType({**METADATA})

CHAT: Mapping[str, Rule] = MappingProxyType(
    {
        **_SHARED,
        # The deprecated forms of tools and tool_choice.
        "functions": Rule(_empty_list, LEGACY_FUNCTIONS),
        "function_call": Rule(_only("none", "auto"), LEGACY_FUNCTIONS),
        "modalities": Rule(_text_modality, 'only text is generated; send ["text"]'),
        "audio": Rule(_nothing, "audio output is not supported"),
        # A predicted output only makes generation faster; the answer is the same.
        "prediction": _hint("predicted outputs are not supported"),
        # A hosted search is an offer the model may decline: it answers from what it knows.
        "web_search_options": _hint("web search is not supported"),
        # Verbosity steers the answer's length the way a sentence of the prompt would, with no
        # bound a client could check, and coding agents send it by default: a hint.
        "verbosity": _hint("verbosity is not supported"),
        "moderation": Rule(_nothing, "moderation is not supported"),
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
        **METADATA,
        "client_metadata": _label(),
        # "auto" lets the server drop the oldest input when it overflows the context; here an
        # overflow is still a 400 (context_length_exceeded), so nothing is dropped unseen.
        "truncation": _hint("the input is never truncated", _only("disabled")),
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


MESSAGES: Mapping[str, Rule] = MappingProxyType(
    {
        **METADATA,
        # Labels of Anthropic's service; the text generated is the same.
        "cache_control": _label(),  # prompts are cached here by prefix anyway
        "diagnostics": _label(),
        "speed": _label(),
        "user_profile_id": _label(),
        "workspace_id": _label(),
        # Where the model runs: this server runs where it is deployed.
        "inference_geo": _hint("inference regions are not supported"),
        # Remote MCP tools are an offer the model may decline, as a hosted tool is.
        "mcp_servers": _hint("MCP servers are not supported"),
        "container": Rule(_nothing, "code execution containers are not supported"),
    }
)
"""Rules for /v1/messages and /v1/messages/count_tokens (Anthropic's Messages API)."""

EMBEDDINGS: Mapping[str, Rule] = METADATA
"""Rules for /v1/embeddings: the labels (`user`) every route accepts."""

Verdict = Literal["pass", "note", "refuse"]


def check_fields(
    data: Any,
    implemented: Iterable[str],
    rules: Mapping[str, Rule],
    info: ValidationInfo | None = None,
) -> None:
    """Raise the 400 for the fields of `data` that would be silently dropped (its message
    names every such field); otherwise note the labels and hints it accepts in the request's
    record (`info`: the wire model's validation context holds it)."""
    if not isinstance(data, dict):
        return  # not an object: the model's own validation says so
    unused = unused_of(info)
    known = set(implemented)
    verdicts = {
        name: _verdict(rules.get(name), value, unused.strict)
        for name, value in data.items()
        if name not in known
    }
    refused = [name for name, verdict in verdicts.items() if verdict == "refuse"]
    if refused:
        _refuse(refused, rules)
    for name, verdict in verdicts.items():
        if verdict == "note":
            unused.note(name)


def _verdict(rule: Rule | None, value: Any, strict: bool) -> Verdict:
    if rule is None:
        return "refuse"
    if value is None or (rule.kind != LABEL and rule.accepts(value)):
        return "pass"
    if rule.kind == LABEL or (rule.kind == HINT and not strict):
        return "note"
    return "refuse"


def _refuse(refused: list[str], rules: Mapping[str, Rule]) -> None:
    named = [
        f"unsupported parameter '{name}': {_reason(name, rules)}" for name in refused[:MENTIONED]
    ]
    if len(refused) > MENTIONED:
        named.append(f"and {len(refused) - MENTIONED} more unsupported parameters")
    raise InvalidRequest("; ".join(named), param=refused[0], code=CODE)


def _reason(name: str, rules: Mapping[str, Rule]) -> str:
    rule = rules.get(name)
    if rule is None:
        return "this server does not implement it; leave it out"
    return rule.refusal
