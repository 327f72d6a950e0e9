"""What every command shares: the stderr console, one-line errors, shared option types."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Callable

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from stages.core.pipeline.errors import GpoError

err = Console(stderr=True, highlight=False, soft_wrap=True)  # soft wrap: an error stays one line
out = Console(highlight=False, soft_wrap=True)  # printed commands must stay copy-pasteable


def wide(columns: int) -> Console:
    """stdout at least `columns` wide, for wide tables: rich clamps print(width=...) to the console's width,
    and a pipe or a log file reports 80, which folds every cell."""
    return Console(width=max(out.width, columns), highlight=False, soft_wrap=True)

RunOpt = Annotated[Path, typer.Option("--run", help="Run directory (stage folders are created inside).")]



class _WarningsToStderr(logging.Handler):
    """The library's warnings (logger "gpo": e.g. a stray file it did not read) as one yellow line each."""

    def emit(self, record: logging.LogRecord) -> None:
        err.print(f"[yellow]{escape(record.getMessage())}[/yellow]")


logging.getLogger("gpo").addHandler(_WarningsToStderr(logging.WARNING))


def log(message: str) -> None:
    err.print(f"[dim]{message}[/dim]")


def one_line(text: str) -> str:
    """An error names user-made things (paths, run folders, values): newlines in them are shown escaped so
    the error stays one line, and brackets are escaped so rich prints them instead of reading markup."""
    return escape(text.replace("\r", "\\r").replace("\n", "\\n"))


def handle_errors(fn: Callable) -> Callable:
    """Turn user errors into one line on stderr and a non-zero exit; GPO_DEBUG=1 shows tracebacks."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from stages.core.pipeline.runner import sigterm_stops_work

        try:
            with sigterm_stops_work():  # from the start: a preemption during the checks exits 143 too
                return fn(*args, **kwargs)
        except GpoError as e:
            err.print(f"[bold red]error:[/bold red] {one_line(str(e))}")
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/bold red]: finished chunks are kept; rerun the same command")
            raise typer.Exit(130) from None
        except OSError as e:
            if os.environ.get("GPO_DEBUG"):
                raise
            where = e.filename or "I/O"
            err.print(f"[bold red]error:[/bold red] {one_line(f'{e.strerror or e} ({where})')}")
            raise typer.Exit(1) from None
    return wrapper


class OneLineUsageErrors(typer.core.TyperGroup):
    """Usage errors (unknown option, missing option, bad value) as the same one `error:` line as every
    other error, instead of click's framed box; and a help listing whose command summaries are whole."""

    def format_commands(self, ctx, formatter) -> None:
        # click cuts each summary to the width left on one line and ends it with "...": wrap it instead.
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, " ".join((command.short_help or command.help or "").split("\n\n")[0].split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, windows_expand_args=True,
             **extra):
        from typer._click import exceptions as click  # the click that typer vendors and raises

        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "gpo"
            err.print(f"[bold red]error:[/bold red] {where}: {escape(e.format_message())} "
                      f"(see `{where} --help`)")
            sys.exit(e.exit_code)
        except click.ClickException as e:
            err.print(f"[bold red]error:[/bold red] {escape(e.format_message())}")
            sys.exit(e.exit_code)
        except typer.Abort:
            err.print("[bold red]error:[/bold red] aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)
