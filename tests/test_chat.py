"""The per-token SSE template renders exactly what the pydantic chunk model renders."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mlxdeploy.api.protocol import Delta

from mlxdeploy.api.chat import Completion, _chunk, sse_event


@given(st.text(), st.text(min_size=1))
def test_content_event_matches_the_chunk_model(text: str, model: str) -> None:
    completion = Completion(model=model)
    assert completion.content_event(text) == sse_event(_chunk(completion, Delta(content=text)))
