"""`gpo --version` and `-h` as `--help` on every command, subcommands of `gpo toy` included."""

from importlib.metadata import version

import pytest
import typer
from typer.testing import CliRunner

from gpo_cli.main import app

runner = CliRunner()


def command_paths(command, path: tuple = ()) -> list[tuple]:
    paths = [path]
    for name, sub in getattr(command, "commands", {}).items():  # typer's groups (typer vendors click)
        paths += command_paths(sub, path + (name,))
    return paths


PATHS = command_paths(typer.main.get_command(app))


def test_version_is_the_installed_distributions():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"gpo {version('gpo')}"


def test_every_command_is_listed():
    assert {"sample", "export", "train", "demo", "toy"} <= {p[0] for p in PATHS if p}
    assert ("toy", "build") in PATHS


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "gpo")
def test_dash_h_is_help(path):
    short = runner.invoke(app, [*path, "-h"])
    long = runner.invoke(app, [*path, "--help"])
    assert short.exit_code == 0 and "Usage" in short.output, short.output
    assert short.output == long.output
    assert "-h" in long.output  # listed as a help option
