"""Issue 21.12: every `gpo ... --help` reads whole at 80 columns (Slurm logs, pipes, default terminals):
wrapped, never cut with `…`, every option's name in full, whether COLUMNS is unset, 80 or wider."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from gpo_cli.main import app

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command_paths() -> list[tuple[list[str], object]]:
    """Every command and subcommand of `gpo`, with its path of names."""
    found, todo = [], [([], typer.main.get_command(app))]
    while todo:
        path, command = todo.pop()
        found.append((path, command))
        if hasattr(command, "commands"):  # a group (typer vendors its own click: no isinstance)
            todo += [(path + [name], sub) for name, sub in command.commands.items()]
    return sorted(found, key=lambda item: item[0])


PATHS = command_paths()


def option_names(command) -> list[str]:
    return [name for p in command.params if p.param_type_name == "option" for name in p.opts + p.secondary_opts]


@pytest.mark.parametrize("columns", [None, "80", "200"])
@pytest.mark.parametrize("path,command", PATHS, ids=[" ".join(p) or "gpo" for p, _ in PATHS])
def test_help_fits_80_columns_whole(path, command, columns, monkeypatch):
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    result = CliRunner().invoke(app, [*path, "--help"])
    text = result.output
    assert result.exit_code == 0, text
    too_long = [line for line in text.splitlines() if len(line) > 80]
    assert not too_long, "\n".join(too_long)
    assert "…" not in text, text
    words = text.split()
    for name in option_names(command):  # each name whole, as a word of its own (a wrapped line never splits it)
        assert any(w == name or w.startswith(name + "/") or w.startswith(name + ",") or w.endswith("/" + name)
                   for w in words), f"{name} missing from `gpo {' '.join(path)} --help`:\n{text}"


def test_group_help_lists_each_command_with_its_whole_summary():
    """click shortens each command's line in a group's help to ~45 characters and '...': gpo shows it whole."""
    for path, command in PATHS:
        if not hasattr(command, "commands"):
            continue
        text = " ".join(CliRunner().invoke(app, [*path, "--help"]).output.split())
        for name, sub in command.commands.items():
            summary = " ".join((sub.help or "").split("\n\n")[0].split())
            assert f"{name} {summary}" in text, (name, summary, text)


def test_help_in_a_real_process_with_columns_unset_fits():
    """Not through CliRunner: the `gpo` program itself, stdout a pipe, COLUMNS unset."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["PYTHONPATH"] = REPO
    out = subprocess.run([sys.executable, "-m", "gpo_cli.main", "sample", "-h"], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--trust-remote-code" in out.stdout and "…" not in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
