"""Replicas on Ray Serve (the spec's `cluster`): a real `mlxdeploy up` that starts a local Ray
instance with 2 replicas of the tiny model behind Serve's proxy, driven over HTTP with the
official openai client. `render --as ray` is checked against Ray's own config schema."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from typer.testing import CliRunner

from mlxdeploy.cli import app
from tests.conftest import write_spec
from tests.logwait import wait_for_log
from tests.processes import alive, descendants
from tests.servers import RunningServer, start_server, stop_server
from tests.test_auth import ENV_KEYS, ENV_NAME, FILE_KEY, bearer, write_auth_spec

pytest.importorskip("ray.serve")  # the `ray` extra, which `make install` installs

REPLICAS = 2
USER = [{"role": "user", "content": "Say hello"}]
PRESET = "/v1/presets/pirate"


def write_cluster_spec(spec_dir: Path, model: Path) -> Path:
    return write_auth_spec(
        spec_dir,
        model,
        defaults={"max_tokens": 8},
        cluster={"replicas": REPLICAS, "resources": {"num_cpus": 0.5}},
        endpoints={"pirate": {"path": PRESET, "system_prompt": "Talk like a pirate."}},
    )


@pytest.fixture(scope="module")
def cluster(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    spec = write_cluster_spec(tmp_path_factory.mktemp("cluster"), tiny_model_dir)
    env = {**os.environ, ENV_NAME: ",".join(ENV_KEYS)}
    with start_server(spec, env=env, timeout=300) as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.api_url, api_key=FILE_KEY, max_retries=0, timeout=60)


def chat(client: openai.OpenAI) -> tuple[str, str]:
    """One completion through the proxy: its text and the replica that answered it."""
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=USER)
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    return completion.choices[0].message.content, raw.headers["x-replica-id"]


@pytest.mark.process
def test_requests_reach_every_replica(client: openai.OpenAI) -> None:
    seen: set[str] = set()
    with ThreadPoolExecutor(4) as pool:
        for _ in range(10):  # Serve's router spreads concurrent requests over both
            seen |= {replica for _, replica in pool.map(lambda _: chat(client), range(4))}
            if len(seen) == REPLICAS:
                break
    assert len(seen) == REPLICAS, seen


@pytest.mark.process
def test_streams_come_through_the_proxy(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="tiny", messages=USER, stream=True)
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.process
def test_request_and_replica_ids_in_headers_and_access_log(cluster: RunningServer) -> None:
    response = httpx.post(
        f"{cluster.api_url}/chat/completions",
        json={"model": "tiny", "messages": USER},
        headers={**bearer(FILE_KEY), "X-Request-ID": "trace-7f3a"},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers.get_list("x-request-id") == ["trace-7f3a"]  # once, the client's
    replica = response.headers["x-replica-id"]
    log = wait_for_log(cluster, "id=trace-7f3a", timeout=60)  # Ray forwards it
    line = next(line for line in log.splitlines() if "id=trace-7f3a" in line)
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in line
    assert f"replica={replica}" in line


@pytest.mark.process
def test_auth_through_the_proxy(cluster: RunningServer) -> None:
    url = f"{cluster.api_url}/chat/completions"
    body = {"model": "tiny", "messages": USER}
    refused = httpx.post(url, json=body, timeout=60)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    for key in (*ENV_KEYS, FILE_KEY):  # keys from the environment reach the replicas too
        assert httpx.post(url, json=body, headers=bearer(key), timeout=60).status_code == 200


@pytest.mark.process
def test_presets_through_the_proxy(cluster: RunningServer) -> None:
    url = f"{cluster.base_url}{PRESET}"
    body = {"messages": USER, "max_tokens": 4}
    response = httpx.post(url, json=body, headers=bearer(FILE_KEY), timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "pirate"
    assert "x-replica-id" in response.headers
    listed = httpx.get(f"{cluster.api_url}/models", headers=bearer(FILE_KEY), timeout=60).json()
    assert {"tiny", "pirate"} <= {card["id"] for card in listed["data"]}


@pytest.mark.process
def test_metrics_through_the_proxy(cluster: RunningServer) -> None:
    text = httpx.get(f"{cluster.base_url}/metrics", headers=bearer(FILE_KEY), timeout=60).text
    assert "mlxdeploy_http_requests_total" in text


def replica_pids(root: int) -> list[int]:
    """The replica actors' processes among `root`'s descendants."""
    return [p.pid for p in descendants(root) if p.command.startswith("ray::ServeReplica")]


@pytest.mark.process
def test_a_killed_replica_leaves_the_service_answering(
    client: openai.OpenAI, cluster: RunningServer
) -> None:
    pids = replica_pids(cluster.process.pid)
    assert len(pids) == REPLICAS, pids
    os.kill(pids[0], signal.SIGKILL)
    answers = [chat(client) for _ in range(6)]  # every one succeeds (chat() checks each)
    assert len(answers) == 6


@pytest.mark.process
def test_sigterm_removes_the_replicas_and_exits_0(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "one.yaml", tiny_model_dir, name="tiny", cluster={"replicas": 1})
    with start_server(spec, timeout=300) as server:
        pids = replica_pids(server.process.pid)
        assert len(pids) == 1, pids
        assert stop_server(server, timeout=90) == 0
    assert not any(alive(pid) for pid in pids)
    assert "removing the replicas" in server.log()


def test_render_as_ray_loads_with_serves_schema(tmp_path: Path, tiny_model_dir: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    spec = write_cluster_spec(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(app, ["render", str(spec), "--as", "ray"])
    assert result.exit_code == 0, result.output
    config = ServeDeploySchema.model_validate(yaml.safe_load(result.output))
    (application,) = config.applications
    assert application.import_path == "mlxdeploy.serve.replicas.deployment:build"
    assert application.args == {"spec": str(spec.resolve()), "overrides": {}, "log_level": "info"}
    (deployment,) = application.deployments
    assert deployment.num_replicas == REPLICAS
    assert deployment.ray_actor_options.num_cpus == 0.5
    assert ENV_NAME in result.output and ",".join(ENV_KEYS) not in result.output  # named only


def test_render_as_ray_autoscaling(tmp_path: Path, tiny_model_dir: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    spec = tmp_path / "scaled.yaml"
    spec.write_text(
        f"model: {tiny_model_dir}\nport: 9000\n"
        "cluster: {autoscaling: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 3}}\n"
    )
    result = CliRunner().invoke(app, ["render", str(spec), "--as", "ray"])
    config = ServeDeploySchema.model_validate(yaml.safe_load(result.output))
    assert config.http_options.port == 9000
    scaling = config.applications[0].deployments[0].autoscaling_config
    assert scaling["max_replicas"] == 4 and scaling["target_ongoing_requests"] == 3
