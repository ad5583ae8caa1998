"""The start-up warm-up: the engine runs a few short generations before it reports ready, says how
long they took, and leaves no trace; after it, the first requests compile no MLX kernels.
(The rest of the suite runs without it: conftest.py `no_warmup`; the spec's default is on.)"""

from __future__ import annotations

import concurrent.futures
import logging
from pathlib import Path

import httpx
import pytest

from mlxdeploy.engine.generator import SlotGenerator
from mlxdeploy.engine.storage import Slots
from tests.conftest import WARMUP_ENV, real_app, write_spec
from tests.scrape import scrape
from tests.servers import start_server

CHAT = "/v1/chat/completions"
WARMED = "model tiny warmed up in"


@pytest.fixture(autouse=True)
def spec_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spec's own default, not the suite's MLXDEPLOY_ENGINE__WARMUP=false."""
    monkeypatch.delenv(WARMUP_ENV, raising=False)


def test_the_engine_warms_up_before_it_is_ready(
    tiny_spec: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mlxdeploy.engine"), real_app(tiny_spec) as app:
        ready = [r.getMessage() for r in caplog.records if r.name == "mlxdeploy.engine"]
        assert app.http.get("/health").json()["status"] == "ok"
    warmed = [line for line in ready if line.startswith(WARMED)]
    assert len(warmed) == 1, ready
    assert warmed[0].endswith(" s")
    assert ready.index(warmed[0]) < ready.index("model tiny ready (chat template)")


def test_the_warm_up_leaves_no_trace(tiny_spec: Path) -> None:
    """Counters start at zero, and the warm-up's own prompt is not in the prefix cache."""
    with real_app(tiny_spec) as app:
        before = scrape(app.http)
        assert before.value("mlxdeploy_prompt_tokens_total", model="tiny") == 0
        assert before.value("mlxdeploy_completion_tokens_total", model="tiny") == 0
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        usage = app.http.post(CHAT, json=body).json()["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0
        assert scrape(app.http).value("mlxdeploy_prefix_cache_hits_total", model="tiny") == 0


def test_the_warm_up_can_be_turned_off(tiny_spec: Path, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, logger="mlxdeploy.engine"),
        real_app(tiny_spec, engine={"warmup": False}) as app,
    ):
        assert app.http.get("/health").json()["status"] == "ok"
    assert not [r for r in caplog.records if r.getMessage().startswith(WARMED)]


def compiled_kernels(tmp: Path) -> set[str]:
    """MLX's CPU backend compiles each fused kernel once into $TMPDIR/mlx/<version>/cpu."""
    return {path.name for path in tmp.glob("mlx/*/cpu/*.so")}


@pytest.mark.process
def test_no_kernel_is_compiled_for_the_first_requests(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A fresh kernel cache, as on a new machine: the warm-up compiles what requests need, so
    a first request, a burst of them and a JSON-constrained one compile nothing more."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    spec = write_spec(tmp_path / "tiny.yaml", tiny_model_dir, name="tiny", stop=[])
    with start_server(spec, env={"TMPDIR": str(tmp)}) as server:
        warmed = compiled_kernels(tmp)
        assert warmed, "the warm-up compiled no kernels: is TMPDIR honoured?"
        url = f"{server.api_url}/chat/completions"
        for body in (
            {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8},
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0},
            {
                "messages": [{"role": "user", "content": "A JSON object, please."}],
                "max_tokens": 8,
                "response_format": {"type": "json_object"},
            },
        ):
            assert httpx.post(url, json=body, timeout=120).status_code == 200
        burst = [
            {"messages": [{"role": "user", "content": "Go " * k}], "max_tokens": 8}
            for k in range(1, 5)
        ]
        with concurrent.futures.ThreadPoolExecutor(len(burst)) as pool:
            replies = list(pool.map(lambda b: httpx.post(url, json=b, timeout=120), burst))
        assert [reply.status_code for reply in replies] == [200] * len(burst)
        assert compiled_kernels(tmp) == warmed


@pytest.mark.parametrize("wait", [0, 4])
def test_the_warm_up_reuses_a_freed_slot_and_decodes_alone(
    tiny_spec: Path, monkeypatch: pytest.MonkeyPatch, wait: int
) -> None:
    """The first uses of the generation loop's shapes happen before ready: a prompt written
    into the slot of a request that ended while another decodes (a decode step over slots
    at different lengths), and a request decoding alone (batch 1, no mask)."""
    reused: list[int] = []
    steps: list[int] = []
    take, release, slots_of = Slots.take, Slots.release, SlotGenerator._decode_slots
    freed: set[int] = set()

    def counted_take(self: Slots) -> int:
        slot = take(self)
        if slot in freed and self.used > 1:
            reused.append(slot)
        return slot

    def counted_release(self: Slots, slot: int) -> None:
        freed.add(slot)
        release(self, slot)

    def counted_steps(self: SlotGenerator) -> list[int]:
        chosen = slots_of(self)
        steps.append(len(chosen))
        return chosen

    monkeypatch.setattr(Slots, "take", counted_take)
    monkeypatch.setattr(Slots, "release", counted_release)
    monkeypatch.setattr(SlotGenerator, "_decode_slots", counted_steps)
    with real_app(tiny_spec, engine={"prefill_wait_steps": wait}) as app:
        assert app.http.get("/health").json()["status"] == "ok"
    assert reused, "no prompt took a freed slot while another request decoded"
    assert max(steps) >= 2 and steps[-1] == 1, steps
