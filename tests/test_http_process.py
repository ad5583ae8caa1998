"""What only a real `mlxdeploy up` process shows, on one process with auth and CORS: the access
log (it names request ids, never keys), the adversarial probes over a real socket, where a
request whose body is left unread or whose framing breaks would drop the connection, and a
burst of connections at once (the socket side of the in-process soak in test_adversarial.py).

Everything else about HTTP runs on the app in-process (test_api.py, test_auth.py, ...)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.logwait import wait_for_log
from tests.servers import RunningServer, start_server
from tests.test_adversarial import BASE, BODY_LIMIT, Probe, check, probes, send
from tests.test_auth import ENV_KEYS, ENV_NAME, FILE_KEY, WRONG_KEY, bearer, write_auth_spec

pytestmark = pytest.mark.process  # every test here drives a real server process

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]
SOCKET_EXAMPLES = 200
BURST = 256


@pytest.fixture(scope="module")
def server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    spec = write_auth_spec(
        tmp_path_factory.mktemp("process"),
        tiny_model_dir,
        defaults={"max_tokens": 4},
        limits={"max_tokens": 4, "max_body_bytes": BODY_LIMIT},
    )
    with start_server(spec, env={ENV_NAME: " , ".join(ENV_KEYS)}) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


def test_the_access_log_names_the_request_id(http: httpx.Client, server: RunningServer) -> None:
    request_id = http.get("/v1/models", headers=bearer(FILE_KEY)).headers["x-request-id"]
    log = wait_for_log(server, f"id={request_id}")
    line = next(line for line in log.splitlines() if f"id={request_id}" in line)
    assert "mlxdeploy.access" in line and '"GET /v1/models HTTP/1.1" 200' in line


def test_keys_never_reach_the_log(http: httpx.Client, server: RunningServer) -> None:
    http.get("/v1/models", headers=bearer(WRONG_KEY))
    ok = http.get("/v1/models", headers=bearer(FILE_KEY))
    http.post(CHAT, json={"messages": USER, "max_tokens": 2}, headers=bearer(ENV_KEYS[0]))
    last = http.get("/v1/models", headers=bearer(FILE_KEY)).headers["x-request-id"]
    log = wait_for_log(server, f"id={ok.headers['x-request-id']}", f"id={last}")
    assert f"id={last}" in log  # the access log is on and has written every request above
    for secret in (*ENV_KEYS, FILE_KEY, WRONG_KEY):
        assert secret not in log


def test_probes_over_a_socket_get_4xx_and_never_drop_the_connection(http: httpx.Client) -> None:
    """With a key the probes reach the routes; without one they are refused (401) before
    their body is read."""
    sent: list[str] = []

    @settings(
        max_examples=SOCKET_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(probes(), st.booleans())
    def fuzz(probe: Probe, with_key: bool) -> None:
        sent.append(probe.kind)
        check(send(http, probe, bearer(FILE_KEY) if with_key else None), probe)

    fuzz()
    assert len(sent) == SOCKET_EXAMPLES
    assert http.get("/health").status_code == 200
    reply = http.post(CHAT, json=BASE, headers=bearer(FILE_KEY))
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["finish_reason"] in ("stop", "length")


async def burst(base_url: str) -> list[int | BaseException]:
    """BURST connections opened at once, each asking for /health."""
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:

        async def status() -> int:
            return (await client.get("/health")).status_code

        return await asyncio.gather(*(status() for _ in range(BURST)), return_exceptions=True)


def test_a_burst_of_connections_with_none_dropped(server: RunningServer) -> None:
    results = asyncio.run(burst(server.base_url))
    dropped = [r for r in results if isinstance(r, BaseException)]
    assert not dropped, f"{len(dropped)} connections dropped, first: {dropped[0]!r}"
    assert results == [200] * BURST
