"""JSON Schema → llguidance grammar, without a tokenizer and without MLX.

Every layer uses it: `validate` checks an endpoint preset's schema, the API checks a request's
schema before admitting it (a bad schema is a 400, not a failed generation), and the generation
thread compiles the same grammar into a matcher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llguidance import LLMatcher

if TYPE_CHECKING:  # a TypedDict of the type stubs only
    from llguidance._lib import JsonCompileOptions

# Compact JSON (no whitespace between tokens): a model cannot spend its max_tokens on blank
# space, and every answer has one spelling per value.
JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}


def grammar_of(schema: str) -> str:
    """The llguidance grammar of a JSON schema (its JSON text); ValueError when it is not
    JSON."""
    return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)


def problem_of(schema: str) -> str | None:
    """Why the JSON schema (its JSON text) cannot be enforced, or None when it can."""
    try:
        error = LLMatcher.validate_grammar(grammar_of(schema))
    except ValueError as exc:
        return str(exc)
    return error or None
