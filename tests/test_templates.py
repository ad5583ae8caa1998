"""Chat templates from files: checked by validate, and used by the app over the model's."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxdeploy.spec import SpecError, load_spec
from tests.conftest import real_app, write_spec

REPO = Path(__file__).parent.parent
PLAIN = "{% for m in messages %}{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}assistant>"


def test_the_shipped_chatml_template_is_valid(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path / "s.yaml", "owner/m", chat_template=str(REPO / "templates" / "chatml.jinja")
    )
    assert "<|im_start|>" in (load_spec(spec).catalog.models[0].chat_template or "")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% for m in messages %}{{ m.content }", "unexpected '}'"),
        ("{{ mesages[0] }}", "undefined variable 'mesages'"),
    ],
)
def test_validate_finds_template_mistakes(tmp_path: Path, template: str, message: str) -> None:
    (tmp_path / "t.jinja").write_text(template)
    spec = tmp_path / "s.yaml"
    spec.write_text("model: owner/m\nchat_template: t.jinja\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    problem = str(info.value.problems[0])
    assert problem.startswith(f"{spec}:2:16: chat_template: ")
    assert message in problem


def test_a_missing_template_file(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml", "owner/m", chat_template="nope.jinja")
    with pytest.raises(SpecError, match="cannot read template"):
        load_spec(spec)


def test_the_server_formats_prompts_with_the_spec_template(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from mlx_lm.utils import load_tokenizer

    (tmp_path / "plain.jinja").write_text(PLAIN)
    spec = write_spec(tmp_path / "s.yaml", tiny_model_dir, chat_template="plain.jinja")
    tokenizer = load_tokenizer(tiny_model_dir)
    expected = len(tokenizer.encode("user> Hello there\nassistant>", add_special_tokens=False))
    with real_app(spec) as app:
        body = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 1}
        reply = app.http.post("/v1/chat/completions", json=body).json()
    assert reply["usage"]["prompt_tokens"] == expected
