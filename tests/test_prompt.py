"""Chat formatting with the real SmolLM2 tokenizer: chat template vs role mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlxdeploy.engine.api import PromptRejected, RoleOverride, Turn
from mlxdeploy.engine.prompt import encode_chat, role_mapped_prompt
from mlxdeploy.spec.settings import RoleMapping

MESSAGES = [
    Turn(role="system", content="Be brief."),
    Turn(role="user", content="Hi"),
    Turn(role="assistant", content="Hello!"),
    Turn(role="user", content="Capital of France?"),
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def test_role_mapping_formats_like_mlx_lm() -> None:
    mapping = RoleMapping()
    assert role_mapped_prompt(MESSAGES, mapping) == (
        "ASSISTANT's RULE: Be brief.\nUSER: Hi\nASSISTANT: Hello!\n"
        "USER: Capital of France?\nASSISTANT:"
    )


def test_system_prompt_opens_a_conversation_without_a_system_message() -> None:
    prompt = role_mapped_prompt(MESSAGES[1:2], RoleMapping(system_prompt="Rules.", stop=" | "))
    assert prompt == "Rules. | USER: Hi | ASSISTANT:"


def test_chat_template_wins_when_the_tokenizer_has_one(tokenizer: Any) -> None:
    tokens = encode_chat(
        tokenizer, MESSAGES, mapping=RoleMapping(), override=None, use_template=True
    )
    text = tokenizer.decode(tokens)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")


def test_role_mapping_when_the_spec_says_so(tokenizer: Any) -> None:
    tokens = encode_chat(
        tokenizer, MESSAGES, mapping=RoleMapping(), override=None, use_template=False
    )
    assert tokenizer.decode(tokens) == role_mapped_prompt(MESSAGES, RoleMapping())


def test_a_request_role_mapping_overrides_single_keys(tokenizer: Any) -> None:
    override = RoleOverride(user="Q: ", assistant="A:")
    tokens = encode_chat(
        tokenizer, MESSAGES[1:2], mapping=RoleMapping(), override=override, use_template=True
    )
    assert tokenizer.decode(tokens) == (
        "A chat between a curious user and an artificial intelligence assistant.\nQ: Hi\nA:"
    )


def test_a_template_that_rejects_the_messages_rejects_the_prompt(tokenizer: Any) -> None:
    original = tokenizer.chat_template
    tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    try:
        with pytest.raises(PromptRejected, match="roles must alternate"):
            encode_chat(
                tokenizer, MESSAGES, mapping=RoleMapping(), override=None, use_template=True
            )
    finally:
        tokenizer.chat_template = original
