"""The per-token SSE templates render exactly what the pydantic chunk models render."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mlxdeploy.api.chat.serving import ChatFormat
from mlxdeploy.api.chat.wire import Delta
from mlxdeploy.api.completions.serving import TextFormat
from mlxdeploy.api.completions.wire import TextChoice, TextCompletion
from mlxdeploy.api.sse import sse_event
from mlxdeploy.engine.api import Text


@given(st.text(), st.text(min_size=1))
def test_content_event_matches_the_chunk_model(text: str, model: str) -> None:
    fmt = ChatFormat(model=model)
    assert fmt.content_event(Text(text), 0) == sse_event(fmt.chunk(Delta(content=text)))
    assert fmt.content_event(Text(text), 3) == sse_event(fmt.chunk(Delta(content=text), 3))


@given(st.text(), st.text(min_size=1))
def test_text_completion_content_event_matches_its_model(text: str, model: str) -> None:
    fmt = TextFormat(model=model)
    chunk = TextCompletion(
        id=fmt.id, created=fmt.created, model=model, choices=[TextChoice(text=text)]
    )
    assert fmt.content_event(Text(text), 0) == sse_event(chunk)


def test_a_delta_leaves_out_what_it_does_not_carry() -> None:
    """Role only in the opening chunk, `{}` in the finishing one: never `"role": null`."""
    fmt = ChatFormat(model="m")
    opening, content = fmt.chunk(Delta(role="assistant", content="")), fmt.chunk(Delta(content="a"))
    assert opening.model_dump()["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert content.model_dump()["choices"][0]["delta"] == {"content": "a"}
    assert fmt.chunk(Delta(), finish_reason="stop").model_dump()["choices"][0]["delta"] == {}
