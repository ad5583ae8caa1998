"""The spec's two ways past one process: `cluster` (replicas on Ray Serve, behind one endpoint)
and `distributed` (one model sharded over several ranks with mx.distributed)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, model_validator

from ..sharding import Strategy
from .formats import Section
from .problems import FieldError

Backend = Literal["ring", "nccl"]


class Autoscaling(Section):
    """Ray Serve's autoscaler: replicas follow the requests each one has in flight."""

    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas kept running.")
    max_replicas: int = Field(ge=1, description="Most replicas started.")
    target_ongoing_requests: float = Field(
        default=8.0,
        gt=0,
        description="Requests in flight per replica the autoscaler aims for; above it, "
        "replicas are added.",
    )
    upscale_delay_seconds: float = Field(
        default=30.0, ge=0, description="How long load must stay high before adding replicas."
    )
    downscale_delay_seconds: float = Field(
        default=600.0, ge=0, description="How long load must stay low before removing replicas."
    )

    @model_validator(mode="after")
    def _min_below_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            message = (
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
            raise FieldError(("cluster", "autoscaling", "min_replicas"), message)
        return self


class ReplicaResources(Section):
    """What Ray reserves for each replica; a replica starts only where they are free."""

    num_cpus: float = Field(default=1.0, ge=0, description="CPUs per replica.")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per replica.")
    memory_bytes: int | None = Field(
        default=None, ge=1, description="Memory per replica, for Ray's scheduler."
    )


class ClusterSettings(Section):
    """Replicas of the whole server (every model, route and guard) on Ray Serve."""

    replicas: int | None = Field(
        default=None, ge=1, description="A fixed number of replicas (default 1)."
    )
    autoscaling: Autoscaling | None = Field(
        default=None, description="Instead of `replicas`: scale between min and max replicas."
    )
    address: str | None = Field(
        default=None,
        min_length=1,
        description="The Ray cluster to join ('auto', 'ray://head:10001'); unset: RAY_ADDRESS, "
        "else a local Ray instance started for this server.",
    )
    resources: ReplicaResources = Field(
        default=ReplicaResources(), description="Reserved per replica."
    )
    max_ongoing_requests: int = Field(
        default=256,
        ge=1,
        description="Requests Ray's proxy sends one replica at once; the rest wait in the proxy.",
    )
    app_name: str = Field(
        default="mlxdeploy", min_length=1, description="The Serve application's name."
    )

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> ClusterSettings:
        if self.replicas is not None and self.autoscaling is not None:
            message = "use either 'replicas' (a fixed number) or 'autoscaling', not both"
            raise FieldError(("cluster", "replicas"), message, at_key=True)
        return self

    @property
    def fixed_replicas(self) -> int:
        return self.replicas or 1


class DistributedSettings(Section):
    """One model split over several processes (ranks) that mlx.launch starts; rank 0 serves
    HTTP and hands every request to the others."""

    backend: Backend = Field(
        default="ring",
        description="mx.distributed's backend: ring (TCP, any machines) or nccl (NVIDIA GPUs).",
    )
    hosts: list[str] | None = Field(
        default=None,
        min_length=1,
        description="One IP address per rank, rank 0 first (ring needs addresses, not names); "
        "unset: `ranks` processes on this machine.",
    )
    ranks: int | None = Field(
        default=None, ge=2, description="With no hosts: this many ranks on this machine."
    )
    strategy: Strategy = Field(
        default="tensor",
        description="tensor: each rank holds a slice of every layer (heads and MLP split); "
        "pipeline: each rank holds a run of whole layers.",
    )
    starting_port: int = Field(
        default=32323, ge=1024, le=65000, description="The first port the ranks connect on."
    )
    stall_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        description="A turn of the ranks (a decode step, a prompt's reading) still unfinished "
        "after this means a rank stopped answering without exiting: rank 0 ends its requests "
        "and the server stops.",
    )

    @model_validator(mode="after")
    def _hosts_or_ranks(self) -> DistributedSettings:
        if self.hosts is not None and self.ranks is not None and self.ranks != len(self.hosts):
            message = f"ranks is {self.ranks} but hosts lists {len(self.hosts)}; set one of them"
            raise FieldError(("distributed", "ranks"), message, at_key=True)
        if self.hosts is None and self.ranks is None:
            message = "set ranks (processes on this machine) or hosts (one address per rank)"
            raise FieldError(("distributed", "ranks"), message)
        if self.hosts is not None and len(self.hosts) < 2:
            message = "a distributed model needs at least 2 hosts"
            raise FieldError(("distributed", "hosts"), message)
        for index, host in enumerate(self.hosts or []):
            if self.backend == "ring" and not _is_address(host):
                message = f"the ring backend connects to IP addresses; {host!r} is not one"
                raise FieldError(("distributed", "hosts", index), message)
        return self

    @property
    def size(self) -> int:
        return len(self.hosts) if self.hosts is not None else int(self.ranks or 0)

    @property
    def machines(self) -> float:
        """How many machines share the weights: the ranks over the most ranks on one host
        (ranks on one machine share its memory)."""
        if self.hosts is None:
            return 1
        return self.size / max(self.hosts.count(host) for host in self.hosts)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
