"""`mlxdeploy up` on a spec with `cluster`: join (or start) Ray, deploy the replicas behind
Serve's proxy on the spec's host and port, and remove them again on SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

from ...spec.deployment import Deployment
from ...spec.scale import ClusterSettings
from ...spec.settings import Spec
from ..server import ServeResult, address, cannot_listen, free_port_of
from .options import ReplicaArgs, http_options

log = logging.getLogger("mlxdeploy.server")

# A local Ray instance keeps its object store small: requests and answers go over HTTP.
LOCAL_OBJECT_STORE_BYTES = 256 << 20
STOP_POLL_SECONDS = 0.5


def serve_replicas(spec: Spec, args: ReplicaArgs, env: dict[str, str]) -> ServeResult:
    """Run the Ray driver (`driver.py`) in a session of its own, so that the Ray processes it
    starts never see the terminal's Ctrl-C (which would kill them under the replicas); this
    process hands it SIGINT/SIGTERM as a request to drain, and ends with its exit status."""
    try:  # told now, not after Ray has started
        port = free_port_of(spec)
    except OSError as exc:
        return cannot_listen(spec, exc)
    if importlib.util.find_spec("ray") is None:
        return ServeResult(1, "cluster needs Ray Serve: pip install 'mlxdeploy[ray]'", "cluster")
    plan = DriverPlan(args, port, env)
    command = [sys.executable, "-m", "mlxdeploy.serve.replicas.driver"]
    env = {"RAY_DEDUP_LOGS": "0", **os.environ}  # every replica's access lines, as they come
    driver = subprocess.Popen(command, stdin=subprocess.PIPE, env=env, start_new_session=True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: driver.send_signal(signal.SIGTERM))
    assert driver.stdin is not None
    with driver.stdin:
        driver.stdin.write(plan.to_json().encode())
    return ServeResult(driver.wait())


@dataclass(frozen=True)
class DriverPlan:
    """What `up` hands the driver: the replicas' args, the port the proxy listens on, and
    the replicas' environment."""

    args: ReplicaArgs
    port: int
    env: dict[str, str]

    def to_json(self) -> str:
        return json.dumps({"args": self.args.as_dict(), "port": self.port, "env": self.env})

    @classmethod
    def from_json(cls, text: str) -> DriverPlan:
        data = json.loads(text)
        return cls(ReplicaArgs.from_dict(data["args"]), int(data["port"]), dict(data["env"]))


def drive(deployment: Deployment, plan: DriverPlan) -> ServeResult:
    """In the driver: join or start Ray, deploy, wait for SIGTERM, remove the replicas."""
    import ray
    from ray import serve

    from .deployment import build

    spec = deployment.spec
    cluster = spec.cluster or ClusterSettings()
    joined = cluster.address or os.environ.get("RAY_ADDRESS")
    try:
        ray.init(**_init_options(joined, plan.env))
    except (ConnectionError, RuntimeError, ValueError) as exc:
        return ServeResult(1, f"cannot start or join Ray ({joined or 'local'}): {exc}", "cluster")
    stop = _stop_on_signals()  # after ray.init, which installs handlers of its own
    try:
        serve.start(http_options=http_options(spec, plan.port), proxy_location="EveryNode")
        serve.run(build(plan.args.as_dict()), name=cluster.app_name, route_prefix="/")
    except Exception as exc:  # a replica that cannot start fails the deployment
        with contextlib.suppress(Exception):
            _leave(cluster, joined)
        return ServeResult(1, f"the replicas did not start: {_gist(exc)}", "cluster")
    log.log(
        max(logging.INFO, log.getEffectiveLevel()),
        f"serving {', '.join(deployment.catalog.ids)} on http://{address(spec.host, plan.port)} "
        f"({_describe(cluster)} on Ray Serve)",
    )
    parent = os.getppid()
    while not stop.wait(STOP_POLL_SECONDS):
        if os.getppid() != parent:  # `up` is gone (killed): nothing would ever stop this
            break
    log.info("removing the replicas (each finishes its requests first)")
    _leave(cluster, joined)
    return ServeResult(0)


def _gist(exc: Exception) -> str:
    """Ray's error, whose text holds the replica's whole traceback: its first line and the
    replica's own last words (the exception the replica raised)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 2:
        return " ".join(lines)
    return f"{lines[0]} ... {lines[-1]}"


def _init_options(joined: str | None, env: dict[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "address": joined,
        "runtime_env": {"env_vars": env},
        "logging_level": logging.WARNING,
        "log_to_driver": True,
    }
    if joined is None:  # a Ray instance of its own, gone with this process
        options.update(include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    return options


def _describe(cluster: ClusterSettings) -> str:
    scaling = cluster.autoscaling
    if scaling is not None:
        return f"{scaling.min_replicas} to {scaling.max_replicas} replicas"
    n = cluster.fixed_replicas
    return f"{n} replica{'s' if n != 1 else ''}"


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def requested(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, requested)
    signal.signal(signal.SIGTERM, requested)
    return stop


def _leave(cluster: ClusterSettings, joined: str | None) -> None:
    """Delete this application; a Ray instance started here goes with its Serve."""
    import ray
    from ray import serve

    try:
        serve.delete(cluster.app_name)
        if joined is None:
            serve.shutdown()
    finally:
        ray.shutdown()
