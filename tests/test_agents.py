"""An agent framework (openai-agents) completes a tool call against the shipped demo served by a
real `mlxdeploy up`, over chat completions and over the Responses API (the SDK's default): the
agent's first turn is forced to call the tool (`tool_choice` required), the SDK runs the tool
and sends its result back, and the next turn (auto, since the SDK resets the tool choice after
a call) answers in text."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.items import ToolCallItem, ToolCallOutputItem
from agents.result import RunResultBase, RunResultStreaming
from openai import AsyncOpenAI

from tests.servers import RunningServer, start_server

pytestmark = pytest.mark.process  # every test here drives a real server process

DEMO_SPEC = Path(__file__).parent.parent / "configs" / "demo.yaml"
MODEL = "smollm2-135m-instruct"
QUESTION = "What is the weather in Paris?"
FACT = "18 degrees celsius"


@pytest.fixture(scope="module")
def demo(cache_dir: Path) -> Iterator[RunningServer]:
    with start_server(DEMO_SPEC) as server:
        yield server


@pytest.fixture(autouse=True, scope="module")
def no_tracing() -> Iterator[None]:
    set_tracing_disabled(True)  # traces would be exported over the network
    yield
    set_tracing_disabled(False)


@dataclass
class Weather:
    """A weather tool that answers one fact and records the cities it was asked about."""

    cities: list[Any] = field(default_factory=list)

    def agent(self, server: RunningServer, responses: bool = False, **settings: Any) -> Agent[None]:
        """`responses`: the agent speaks the Responses API (the SDK's default), else chat
        completions."""

        @function_tool
        def get_weather(city: str) -> str:
            """The current weather in a city."""
            self.cities.append(city)
            return FACT

        client = AsyncOpenAI(base_url=server.api_url, api_key="x", max_retries=0)
        return Agent(
            name="weather",
            instructions="Answer weather questions with the get_weather tool.",
            tools=[get_weather],
            model=(OpenAIResponsesModel if responses else OpenAIChatCompletionsModel)(
                model=MODEL, openai_client=client
            ),
            model_settings=ModelSettings(
                tool_choice="required", max_tokens=80, temperature=0, **settings
            ),
        )


def assert_completed_call(result: RunResultBase, weather: Weather) -> None:
    assert len(weather.cities) == 1 and isinstance(weather.cities[0], str)
    assert weather.cities[0].strip()
    calls = [item for item in result.new_items if isinstance(item, ToolCallItem)]
    outputs = [item for item in result.new_items if isinstance(item, ToolCallOutputItem)]
    assert len(calls) == 1 and len(outputs) == 1
    call_id = getattr(calls[0].raw_item, "call_id", None)
    assert isinstance(call_id, str) and call_id.startswith("call_")
    output = outputs[0].raw_item
    assert isinstance(output, dict) and output.get("call_id") == call_id
    assert outputs[0].output == FACT
    assert isinstance(result.final_output, str) and result.final_output.strip()
    usage = result.context_wrapper.usage  # both turns' token counts reached the SDK
    assert usage.requests == 2 and usage.input_tokens > 0 and usage.output_tokens > 0


def run_streamed(agent: Agent[None]) -> tuple[RunResultStreaming, list[str]]:
    """The agent's run on the question, streamed, and the names of its item events."""

    async def run() -> tuple[RunResultStreaming, list[str]]:
        streamed = Runner.run_streamed(agent, QUESTION, max_turns=4)
        names = [
            event.name
            async for event in streamed.stream_events()
            if event.type == "run_item_stream_event"
        ]
        return streamed, names

    return asyncio.run(run())


def test_agent_completes_a_tool_call(demo: RunningServer) -> None:
    weather = Weather()
    result = asyncio.run(Runner.run(weather.agent(demo), QUESTION, max_turns=4))
    assert_completed_call(result, weather)


def test_streamed_agent_completes_a_tool_call(demo: RunningServer) -> None:
    weather = Weather()
    agent = weather.agent(demo, parallel_tool_calls=False, include_usage=True)
    result, names = run_streamed(agent)
    assert names[:2] == ["tool_called", "tool_output"]
    assert names[-1] == "message_output_created"
    assert_completed_call(result, weather)


def test_agent_on_the_responses_api_completes_a_tool_call(demo: RunningServer) -> None:
    weather = Weather()
    result = asyncio.run(Runner.run(weather.agent(demo, responses=True), QUESTION, max_turns=4))
    assert_completed_call(result, weather)


def test_streamed_agent_on_the_responses_api_completes_a_tool_call(demo: RunningServer) -> None:
    weather = Weather()
    agent = weather.agent(demo, responses=True, parallel_tool_calls=False)
    result, names = run_streamed(agent)
    assert names[:2] == ["tool_called", "tool_output"]
    assert names[-1] == "message_output_created"
    assert_completed_call(result, weather)
