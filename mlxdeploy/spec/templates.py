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
SAMPLE_INPUT = "A sample text to check that the template renders."


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
        except Exception as error:  # a filter or an expression that fails on this input
            raise TemplateProblem(f"{type(error).__name__}: {error}") from None


def read_chat_template(path: Path) -> str:
    """The template's text, after checking it parses and uses only known variables."""
    text, _ = _compile(path, CHAT_VARIABLES)
    return text


def read_prompt_template(path: Path) -> PromptTemplate:
    """A prompt template that compiles, uses `input` and nothing else, includes no other file,
    and renders a sample text (so a template that fails on every request fails here)."""
    text, template = _compile(path, PROMPT_VARIABLES, require=PROMPT_VARIABLES)
    prompt = PromptTemplate(str(path), text, template)
    try:
        prompt.render(SAMPLE_INPUT)
    except TemplateProblem as error:
        raise TemplateProblem(f"{path}: fails on a sample text: {error}") from None
    return prompt


def _compile(
    path: Path, known: frozenset[str], require: frozenset[str] = frozenset()
) -> tuple[str, Template]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TemplateProblem(f"cannot read template {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise TemplateProblem(f"{path}: not UTF-8 text (byte {error.start})") from None
    environment = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    try:
        tree = environment.parse(text)
        used = meta.find_undeclared_variables(tree)
        others = list(meta.find_referenced_templates(tree))
        template = environment.from_string(tree)
    except TemplateSyntaxError as error:
        raise TemplateProblem(f"{path}:{error.lineno}: {error.message}", error.lineno) from None
    except TemplateError as error:  # e.g. an unknown filter or test
        raise TemplateProblem(f"{path}: {error.message}") from None
    if others:
        raise TemplateProblem(f"{path}: includes other templates ({others[0]}); keep it one file")
    unknown = sorted(used - known)
    if unknown:
        names = ", ".join(sorted(known))
        raise TemplateProblem(f"{path}: undefined variable '{unknown[0]}' (known: {names})")
    missing = sorted(require - used)
    if missing:
        raise TemplateProblem(f"{path}: never uses {{{{ {missing[0]} }}}}, the request's text")
    return text, template
