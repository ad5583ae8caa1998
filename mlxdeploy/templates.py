"""Jinja2 templates kept in files: chat templates (a model's prompt format) and prompt templates
(an endpoint preset's wording around the request's text). Both are read once and checked for
syntax and unknown variables, so `validate` finds mistakes before anything is served."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

# What transformers' apply_chat_template passes to a chat template.
CHAT_VARIABLES = frozenset(
    {"messages", "add_generation_prompt", "bos_token", "eos_token", "unk_token", "pad_token",
     "raise_exception", "tools", "documents", "strftime_now", "date_string"}
)  # fmt: skip
# What a prompt template is given: the request's text.
PROMPT_VARIABLES = frozenset({"input"})


class TemplateProblem(ValueError):
    """`line` is the template file's own line (None when the file cannot be read)."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class PromptTemplate:
    """An endpoint's prompt template: `render(input)` is the text the model is given."""

    path: str
    text: str
    _template: Template = field(repr=False, compare=False)

    def render(self, input: str) -> str:  # noqa: A002 - the template's own variable name
        try:
            return self._template.render(input=input)
        except TemplateError as error:  # e.g. a filter that fails on this input
            raise TemplateProblem(f"the prompt template {self.path} failed: {error}") from None


def read_chat_template(path: Path) -> str:
    """The template's text, after checking it parses and uses only known variables."""
    text, _ = _read(path, CHAT_VARIABLES)
    return text


def read_prompt_template(path: Path) -> PromptTemplate:
    """A prompt template that parses, uses only `input`, and does use it (else the request's
    text would be dropped)."""
    text, environment = _read(path, PROMPT_VARIABLES)
    if "input" not in meta.find_undeclared_variables(environment.parse(text)):
        raise TemplateProblem(f"{path}: never uses {{{{ input }}}}, the request's text")
    return PromptTemplate(str(path), text, environment.from_string(text))


def _read(path: Path, known: frozenset[str]) -> tuple[str, ImmutableSandboxedEnvironment]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TemplateProblem(f"cannot read template {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise TemplateProblem(f"{path}: not UTF-8 text (byte {error.start})") from None
    environment = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    try:
        tree = environment.parse(text)
    except TemplateSyntaxError as error:
        raise TemplateProblem(f"{path}:{error.lineno}: {error.message}", error.lineno) from None
    unknown = sorted(meta.find_undeclared_variables(tree) - known)
    if unknown:
        names = ", ".join(sorted(known))
        raise TemplateProblem(f"{path}: undefined variable '{unknown[0]}' (known: {names})")
    return text, environment
