"""The command line's own surface: --version, shell completion, and help that reads plainly."""

from __future__ import annotations

from importlib.metadata import version

import pytest
from typer.testing import CliRunner

from mlxdeploy.cli import app

COMMANDS = ["validate", "up", "render", "schema", "bench"]


def test_version_names_mlxdeploy_mlx_and_mlx_lm() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == (
        f"mlxdeploy {version('mlxdeploy')} (mlx {version('mlx')}, mlx-lm {version('mlx-lm')})"
    )


def test_shell_completion_is_offered() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert "--install-completion" in result.output and "--show-completion" in result.output


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("up", "Usage: mlxdeploy up [OPTIONS] SPEC"),
        ("render", "Usage: mlxdeploy render [OPTIONS] SPEC"),
        ("validate", "Usage: mlxdeploy validate [OPTIONS] SPECS..."),
    ],
)
def test_usage_lines_name_their_arguments_plainly(command: str, usage: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], prog_name="mlxdeploy")
    assert result.exit_code == 0 and result.output.splitlines()[0] == usage


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_braces_and_no_bool_placeholders(command: str) -> None:
    output = CliRunner().invoke(app, [command, "--help"]).output
    assert "<bool>" not in output and "{" not in output.splitlines()[0]


@pytest.mark.process  # runs the linter as a subprocess
def test_make_lint_has_its_tools_and_passes() -> None:
    """`make lint`'s tools come from the `dev` extra that `make install` installs, and the code
    is kept clean by them."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parent.parent
    for command in (
        ["ruff", "check", "mlxdeploy", "tests", "benchmarks"],
        ["ruff", "format", "--check", "mlxdeploy", "tests", "benchmarks"],
    ):
        done = subprocess.run([sys.executable, "-m", *command], cwd=root, capture_output=True)
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


@pytest.mark.process  # runs git
def test_gitignore_ignores_no_tracked_file() -> None:
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.fail("the repository's git checkout is needed to check .gitignore")
    ignored = subprocess.run(
        ["git", "ls-files", "--cached", "--ignored", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert ignored == []
