"""The spec's `cluster` and `distributed` sections: defaults, and each mistake placed at its
line and column with a message that says what to do."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mlxdeploy.spec import load_spec
from tests.test_spec import single_problem

pytestmark = pytest.mark.usefixtures("clean_env")


def spec_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text("model: owner/model\n" + textwrap.dedent(body))
    return path


def test_cluster_defaults_to_one_replica_of_one_cpu(tmp_path: Path) -> None:
    spec = load_spec(spec_file(tmp_path, "cluster: {}\n"), require_weights=False).spec
    assert spec.cluster is not None
    assert spec.cluster.fixed_replicas == 1
    assert spec.cluster.resources.num_cpus == 1.0
    assert spec.cluster.address is None and spec.distributed is None


def test_distributed_ranks_on_this_machine(tmp_path: Path) -> None:
    spec = load_spec(spec_file(tmp_path, "distributed: {ranks: 4}\n"), require_weights=False).spec
    assert spec.distributed is not None
    assert (spec.distributed.size, spec.distributed.backend) == (4, "ring")
    assert spec.distributed.strategy == "tensor"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "cluster:\n  replicas: 2\n  autoscaling: {max_replicas: 3}\n",
            "spec.yaml:3:3: cluster.replicas: use either 'replicas' (a fixed number) or "
            "'autoscaling', not both",
        ),
        (
            "cluster:\n  autoscaling: {min_replicas: 4, max_replicas: 2}\n",
            "spec.yaml:3:31: cluster.autoscaling.min_replicas: min_replicas (4) is above "
            "max_replicas (2)",
        ),
        (
            "cluster: {autoscaling: {min_replicas: 1}}\n",
            "spec.yaml:2:24: cluster.autoscaling.max_replicas: missing required key 'max_replicas'",
        ),
        (
            "cluster: {replicas: 2}\ndistributed: {ranks: 2}\n",
            "spec.yaml:3:1: distributed: use either 'cluster' (replicas of the whole server) or "
            "'distributed' (one model split over ranks), not both",
        ),
        (
            "distributed: {}\n",
            "spec.yaml:2:14: distributed.ranks: set ranks (processes on this machine) or hosts "
            "(one address per rank)",
        ),
        (
            "distributed: {ranks: 3, hosts: [10.0.0.1, 10.0.0.2]}\n",
            "spec.yaml:2:15: distributed.ranks: ranks is 3 but hosts lists 2; set one of them",
        ),
        (
            "distributed: {ranks: 2, strategy: expert}\n",
            "spec.yaml:2:35: distributed.strategy: must be one of 'tensor' or 'pipeline', "
            "got 'expert'",
        ),
    ],
)
def test_mistakes_are_placed(tmp_path: Path, body: str, expected: str) -> None:
    problem = single_problem(spec_file(tmp_path, body), require_weights=False)
    assert problem == f"{tmp_path}/{expected}"


def test_a_distributed_spec_serves_one_model(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "models:\n  - {id: a, model: owner/a}\n  - {id: b, model: owner/b}\n"
        "distributed: {ranks: 2}\n"
    )
    problem = single_problem(path, require_weights=False)
    assert problem == f"{path}:1:1: models: a distributed spec serves one model; this one lists 2"


def test_splits_are_read_from_mlx_lms_sources() -> None:
    from mlxdeploy.sharding import splits_of

    assert splits_of("llama") == {"tensor"}
    assert splits_of("qwen2") == {"tensor", "pipeline"}
    assert splits_of("mistral") == {"tensor"}  # served by llama's module (MODEL_REMAPPING)
    assert "tensor" in (splits_of("solar_open") or set())  # its Model comes from glm4_moe
    assert splits_of("no_such_model") is None


def test_unreadable_mlx_lm_sources_are_one_problem(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlxdeploy import sharding

    fake = tmp_path / "mlx_lm"
    (fake / "models").mkdir(parents=True)
    (fake / "utils.py").write_text("MODEL_REMAPPING = {\n")  # cut short
    monkeypatch.setattr(sharding, "_mlx_lm_dir", lambda: fake)
    sharding.splits_of.cache_clear()
    sharding._remapping.cache_clear()
    try:
        path = tmp_path / "spec.yaml"
        path.write_text(f"model: {tiny_model_dir}\ndistributed: {{ranks: 2}}\n")
        problem = single_problem(path)
    finally:
        sharding.splits_of.cache_clear()
        sharding._remapping.cache_clear()
    assert problem.startswith(f"{path}:1:8: model: cannot check the split: cannot read mlx-lm's")


def test_ring_hosts_are_addresses(tmp_path: Path) -> None:
    body = "distributed: {hosts: [10.0.0.1, gpu-box]}\n"
    problem = single_problem(spec_file(tmp_path, body), require_weights=False)
    assert problem.endswith(
        "distributed.hosts[1]: the ring backend connects to IP addresses; 'gpu-box' is not one"
    )
