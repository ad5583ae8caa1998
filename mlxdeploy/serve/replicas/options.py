"""What Ray Serve is told about the replicas, from the spec: one source for `mlxdeploy up`
(which deploys in code) and `mlxdeploy render --as ray` (a Serve config file, the
`serveConfigV2` of a KubeRay RayService). No Ray here: rendering needs no extra."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ...spec.scale import ClusterSettings, ReplicaResources
from ...spec.settings import Spec

DEPLOYMENT_NAME = "server"
BUILDER = "mlxdeploy.serve.replicas.deployment:build"  # Serve's import_path
REPLICA_HEADER = "X-Replica-ID"
# Beyond the drain the spec allows, for the engines to stop and the logs to flush.
STOP_MARGIN_SECONDS = 10.0
HEALTH_CHECK_PERIOD_SECONDS = 5.0
HEALTH_CHECK_TIMEOUT_SECONDS = 30.0
# A replica that cannot start (a model that does not load) fails the deployment after these
# (Serve's max_constructor_retry_count, set in code: its config file has no such key).
CONSTRUCTOR_RETRIES = 2


@dataclass(frozen=True)
class ReplicaArgs:
    """What each replica is built from: the spec file and the `up` flags over it. Passed
    through Ray as a plain mapping (Serve's application `args`)."""

    spec: str  # an absolute path, the same on every node
    overrides: dict[str, Any] = field(default_factory=dict)
    log_level: str = "info"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, args: dict[str, Any]) -> ReplicaArgs:
        unknown = sorted(set(args) - {"spec", "overrides", "log_level"})
        if "spec" not in args or unknown:
            raise ValueError(
                f"the application's args take spec, overrides and log_level; got {sorted(args)}"
            )
        overrides = dict(args.get("overrides") or {})
        return cls(str(args["spec"]), overrides, str(args.get("log_level", "info")))


def deployment_options(spec: Spec) -> dict[str, Any]:
    """The deployment's options, under the names Serve's config file uses."""
    cluster = spec.cluster or ClusterSettings()
    options: dict[str, Any] = {
        "max_ongoing_requests": cluster.max_ongoing_requests,
        "graceful_shutdown_wait_loop_s": 1.0,
        "graceful_shutdown_timeout_s": spec.server.shutdown_timeout_seconds + STOP_MARGIN_SECONDS,
        "health_check_period_s": HEALTH_CHECK_PERIOD_SECONDS,
        "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_SECONDS,
        "ray_actor_options": actor_options(cluster.resources),
    }
    scaling = cluster.autoscaling
    if scaling is None:
        options["num_replicas"] = cluster.fixed_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": scaling.min_replicas,
            "initial_replicas": max(scaling.min_replicas, 1),
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
            "upscale_delay_s": scaling.upscale_delay_seconds,
            "downscale_delay_s": scaling.downscale_delay_seconds,
        }
    return options


def actor_options(resources: ReplicaResources) -> dict[str, Any]:
    options: dict[str, Any] = {"num_cpus": resources.num_cpus}
    if resources.num_gpus:
        options["num_gpus"] = resources.num_gpus
    if resources.memory_bytes is not None:
        options["memory"] = resources.memory_bytes
    return options


def http_options(spec: Spec, port: int) -> dict[str, Any]:
    return {"host": spec.host, "port": port, "keep_alive_timeout_s": 75}


def serve_config(spec: Spec, args: ReplicaArgs, env: dict[str, str]) -> dict[str, Any]:
    """A Serve config file (Ray's `ServeDeploySchema`) that deploys this spec's replicas."""
    cluster = spec.cluster or ClusterSettings()
    application: dict[str, Any] = {
        "name": cluster.app_name,
        "route_prefix": "/",
        "import_path": BUILDER,
        "args": args.as_dict(),
        "runtime_env": {"env_vars": env} if env else {},
        "deployments": [{"name": DEPLOYMENT_NAME, **deployment_options(spec)}],
    }
    return {
        "proxy_location": "EveryNode",
        "http_options": http_options(spec, spec.port),
        "applications": [application],
    }
