"""The per-token SSE template renders exactly what the pydantic chunk model renders."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mlxdeploy.api.chat.serving import ChatFormat
from mlxdeploy.api.chat.wire import Delta
from mlxdeploy.api.sse import sse_event


@given(st.text(), st.text(min_size=1))
def test_content_event_matches_the_chunk_model(text: str, model: str) -> None:
    fmt = ChatFormat(model=model)
    assert fmt.content_event(text) == sse_event(fmt.chunk(Delta(content=text)))
