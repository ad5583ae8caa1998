"""Progress of making a model ready: log lines for a GGUF conversion, for reading the weights and
for a download (bars on a terminal), and the weights line that says what stays quantized."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from huggingface_hub.utils.tqdm import _create_progress_bar, hf_thread_map

from mlxdeploy.engine.weights import progress as progress_module
from mlxdeploy.engine.weights.downloads import download_bars
from mlxdeploy.engine.weights.loader import load_model
from mlxdeploy.engine.weights.progress import (
    LogProgress,
    LogStep,
    TerminalProgress,
    TerminalStep,
    progress_for,
)
from mlxdeploy.spec.sources import parse_model_source
from tests.conftest import DEMO_MODEL

ENGINE = "mlxdeploy.engine"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def engine_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ENGINE]


def test_a_gguf_conversion_and_load_log_their_progress(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a terminal (pytest captures stderr): log lines, from start to end."""
    source = parse_model_source(DEMO_MODEL, Path.cwd())
    with caplog.at_level(logging.INFO, logger=ENGINE):
        load_model(source, tmp_path)
    lines = engine_lines(caplog)
    converting = [line for line in lines if line.startswith(f"converting {DEMO_FILE}: ")]
    assert converting[0] == f"converting {DEMO_FILE}: started (272 tensors)"
    assert converting[1].startswith(f"converting {DEMO_FILE}: reading the file (")
    assert converting[-2] == f"converting {DEMO_FILE}: writing the converted model"
    assert list((tmp_path / "gguf").glob("SmolLM2-135M-Instruct.Q4_1-*/model.safetensors"))
    assert converting[-1].startswith(f"converting {DEMO_FILE}: done in ")
    assert converting[-1].endswith(" s (272 tensors)")
    loading = [line for line in lines if line.startswith(f"loading {DEMO_FILE}: ")]
    assert loading[0].startswith(f"loading {DEMO_FILE}: started (") and "MB)" in loading[0]
    assert loading[-1].startswith(f"loading {DEMO_FILE}: done in ")
    assert lines.index(converting[-1]) < lines.index(loading[0])

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=ENGINE):
        load_model(source, tmp_path)  # converted once: only the load remains
    again = engine_lines(caplog)
    assert not [line for line in again if line.startswith("converting")]
    assert [line for line in again if line.startswith(f"loading {DEMO_FILE}: done in ")]


def test_the_weights_line_says_what_stays_quantized(
    demo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The demo's matrices are Q4_1 (and a Q8_0 embedding): on the CPU they stay packed."""
    with caplog.at_level(logging.INFO, logger=ENGINE):
        load_model(parse_model_source(str(demo_dir), Path.cwd()))
    (line,) = [line for line in engine_lines(caplog) if line.startswith("weights on the CPU")]
    assert line == (
        "weights on the CPU: 211 matrices, 211 quantized and kept packed (210 at 4 bits, "
        "1 at 8 bits; multi-row matmuls dequantize them per call), 0 in floating point; "
        "norms, quantization scales and biases in float32; "
        "fast SwiGLU in 0 MLPs (float32 ones only)"
    )


def test_a_float_model_is_described_as_float(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=ENGINE):
        load_model(parse_model_source(str(tiny_model_dir), Path.cwd()))
    lines = engine_lines(caplog)
    name = tiny_model_dir.name
    assert lines[0].startswith(f"loading {name}: started (")
    assert lines[1].startswith(f"loading {name}: done in ")
    assert lines[2] == (
        "weights on the CPU: 15 matrices, none quantized; every parameter in float32; "
        "fast SwiGLU in 2 MLPs (float32 ones only)"
    )


def test_a_long_step_logs_how_far_it_is(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(progress_module, "LOG_EVERY_SECONDS", 0.0)  # a line per advance
    with caplog.at_level(logging.INFO, logger=ENGINE):
        with LogStep("downloading acme/big", None, "bytes") as step:
            step.advance(3 << 20)
            step.set_total(12 << 20)
            step.advance(3 << 20)
            step.phase("2 of 5 files")
    assert engine_lines(caplog)[:4] == [
        "downloading acme/big: started",
        "downloading acme/big: 3.0 MB so far",
        "downloading acme/big: 50% (6.0 MB of 12.0 MB)",
        "downloading acme/big: 2 of 5 files",
    ]
    assert engine_lines(caplog)[4].endswith(" s (6.0 MB)")


def test_a_failed_step_does_not_say_done(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=ENGINE), pytest.raises(OSError):
        with LogStep("converting x.gguf", 10, "tensors") as step:
            step.advance()
            raise OSError("disk full")
    assert engine_lines(caplog) == ["converting x.gguf: started (10 tensors)"]


def test_huggingface_hub_bars_feed_the_step(caplog: pytest.LogCaptureFixture) -> None:
    """The bars huggingface_hub's snapshot_download makes from `tqdm_class`, driven by its own
    helpers as it drives them: a files bar, and a bytes bar whose total grows per file."""
    bars = download_bars(step := LogStep("downloading acme/tiny", None, "bytes"))
    with caplog.at_level(logging.INFO, logger=ENGINE), step:
        written = _create_progress_bar(
            cls=bars,
            log_level=logging.INFO,
            name="huggingface_hub.snapshot_download",
            desc="Reconstructing (incomplete total...)",
            total=0,
            initial=0,
            unit="B",
            unit_scale=True,
        )

        def download(size: int) -> None:  # one file, as _AggregatedTqdm reports it
            written.total = (written.total or 0) + size
            written.refresh()
            for _ in range(4):
                written.update(size // 4)

        hf_thread_map(download, [1 << 20, 3 << 20], desc="Fetching 2 files", tqdm_class=bars)
    assert step.total == 4 << 20
    assert step.done == 4 << 20
    lines = engine_lines(caplog)
    assert lines[0] == "downloading acme/tiny: started"
    assert "downloading acme/tiny: 2 of 2 files" in lines
    assert lines[-1].startswith("downloading acme/tiny: done in ")
    assert lines[-1].endswith(" s (4.0 MB)")


def test_a_terminal_gets_bars_and_everything_else_log_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = io.StringIO()
    monkeypatch.setattr(terminal, "isatty", lambda: True)
    monkeypatch.setattr("sys.stderr", terminal)
    assert isinstance(progress_for("text"), TerminalProgress)
    assert isinstance(progress_for("json"), LogProgress)  # JSON logs stay one object a line
    monkeypatch.setattr(terminal, "isatty", lambda: False)
    assert isinstance(progress_for("text"), LogProgress)


def test_a_terminal_bar_shows_the_step(capsys: pytest.CaptureFixture[str]) -> None:
    with TerminalStep("loading tiny", 4 << 20, "bytes") as step:
        step.advance(4 << 20)
    drawn = capsys.readouterr().err
    assert "loading tiny" in drawn
    assert "4.2/4.2 MB" in drawn
