"""Jinja2 chat templates kept in files: read, checked for syntax and unknown variables."""

from __future__ import annotations

from pathlib import Path

from jinja2 import TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

# What transformers' apply_chat_template passes to a chat template.
CHAT_VARIABLES = frozenset(
    {"messages", "add_generation_prompt", "bos_token", "eos_token", "unk_token", "pad_token",
     "raise_exception", "tools", "documents", "strftime_now", "date_string"}
)  # fmt: skip


class TemplateProblem(ValueError):
    """`line` is the template file's own line (None when the file cannot be read)."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


def read_chat_template(path: Path) -> str:
    """The template's text, after checking it parses and uses only known variables."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TemplateProblem(f"cannot read template {path}: {error.strerror or error}") from None
    env = ImmutableSandboxedEnvironment()
    try:
        tree = env.parse(text)
    except TemplateSyntaxError as error:
        raise TemplateProblem(f"{path}:{error.lineno}: {error.message}", error.lineno) from None
    unknown = sorted(meta.find_undeclared_variables(tree) - CHAT_VARIABLES)
    if unknown:
        known = ", ".join(sorted(CHAT_VARIABLES))
        raise TemplateProblem(f"{path}: undefined variable '{unknown[0]}' (known: {known})")
    return text
