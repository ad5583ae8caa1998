"""The memory check reads only file headers, and `validate` refuses a model that cannot fit."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from typer.testing import CliRunner

from mlxdeploy.cli import app
from mlxdeploy.footprint import estimate_bytes, machine_memory, safetensors_bytes
from mlxdeploy.spec.sources import parse_model_source, weight_files
from tests.conftest import write_spec


def write_header_only(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A .safetensors file with a header and no data: enough for the estimate."""
    header = {
        name: {"dtype": d, "shape": s, "data_offsets": [0, 0]} for name, (d, s) in tensors.items()
    }
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_bytes_come_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_header_only(path, {"a": ("BF16", [1000, 10]), "b": ("U32", [10]), "c": ("F32", [3])})
    assert safetensors_bytes(path, float32=False) == 20000 + 40 + 12
    assert safetensors_bytes(path, float32=True) == 40000 + 40 + 12  # half becomes float32


def test_the_tiny_model_is_measured(tiny_model_dir: Path) -> None:
    source = parse_model_source(str(tiny_model_dir), Path.cwd())
    files = weight_files(source)
    assert files is not None
    size = estimate_bytes(files, on_cpu=True)
    assert abs(size - (tiny_model_dir / "model.safetensors").stat().st_size) < 64 * 1024


def test_validate_refuses_a_model_larger_than_memory(tmp_path: Path) -> None:
    model = tmp_path / "huge"
    model.mkdir()
    (model / "config.json").write_text("{}")
    rows = machine_memory() // 4 // 4096 + 1  # one float32 matrix larger than the machine
    write_header_only(model / "model.safetensors", {"w": ("F32", [rows, 4096])})
    spec = write_spec(tmp_path / "huge.yaml", model)
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 1
    assert result.output.startswith(f"{spec}:1:8: model: the model's weights need about ")
    assert "this machine has" in result.output


def test_a_repo_that_is_not_downloaded_is_not_measured(tmp_path: Path) -> None:
    assert weight_files(parse_model_source("mlxdeploy-tests/not-downloaded", tmp_path)) is None


def test_a_model_split_over_machines_needs_its_share_on_each(tmp_path: Path) -> None:
    model = tmp_path / "big"
    model.mkdir()
    (model / "config.json").write_text('{"num_attention_heads": 4, "intermediate_size": 8}')
    rows = machine_memory() * 3 // 2 // 4 // 4096  # 1.5 machines' worth
    write_header_only(model / "model.safetensors", {"w": ("F32", [rows, 4096])})
    two_hosts = {"hosts": ["10.0.0.1", "10.0.0.2"]}
    split = write_spec(tmp_path / "split.yaml", model, distributed=two_hosts)
    assert CliRunner().invoke(app, ["validate", str(split)]).exit_code == 0
    one_host = {"hosts": ["10.0.0.1", "10.0.0.1"]}  # both ranks on one machine's memory
    crowded = write_spec(tmp_path / "crowded.yaml", model, distributed=one_host)
    result = CliRunner().invoke(app, ["validate", str(crowded)])
    assert result.exit_code == 1 and "this machine has" in result.output
