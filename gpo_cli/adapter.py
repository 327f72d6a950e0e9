"""Stage commands derived from settings dataclasses: the typer side of one source of truth.

`stage_command(app, name, Settings, runtime=..., extra=...)(impl)` registers `gpo <name>` with one option per
settings field (default and help from the field, `stages.core.pipeline.settings.setting`), the shared runtime options,
the command's extra options, `--run` and `--config FILE`. Values are merged in one place, `merge`:
field defaults < the config file < flags given on the command line. `gpo run PIPELINE` uses the same path.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from gpo_cli.common import handle_errors
from stages.core.pipeline.errors import GpoError, UsageError
from stages.core.pipeline.settings import Runtime


@dataclasses.dataclass(frozen=True)
class Extra:
    """A command option that is not a settings field (e.g. where problem fields come from)."""

    annotation: Any
    default: Any
    help: str = ""
    flag: str | None = None
    argument: bool = False


@dataclasses.dataclass(frozen=True)
class StageCommand:
    name: str
    settings: type
    runtime: tuple[str, ...]
    extra: dict[str, Extra]
    impl: Callable[..., None]
    open_config: bool  # unknown config keys go to impl as `config_extra` (train's TRL arguments)
    validate_hook: Callable | None = None  # (settings, config_extra): checks beyond the settings' own
    # (merged values) -> the values the settings check sees, or None where this invocation runs no stage
    check_values: Callable[[dict], dict | None] | None = None

    def known(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.settings)} | set(self.runtime) | set(self.extra)

    def call(self, run: Path | None, values: dict, config: dict | None = None) -> None:
        """Run the command with `values` (flags) over `config` (a file's table) over the defaults."""
        merged, leftover = merge(self, config or {}, values)
        fields = {f.name for f in dataclasses.fields(self.settings)}
        settings = {k: v for k, v in merged.items() if k in fields}
        runtime = Runtime(**{k: v for k, v in merged.items() if k in self.runtime})
        from stages.core.pipeline.progress import set_quiet

        extra = {k: v for k, v in merged.items() if k in self.extra}
        if self.open_config:
            extra["config_extra"] = leftover
        set_quiet(runtime.quiet)  # read where progress is drawn (stages.core.pipeline.progress), not passed down
        try:
            self.impl(run=run, settings=settings, runtime=runtime, **extra)
        finally:
            set_quiet(False)  # a library caller in the same process gets its progress back


    def check(self, ctx) -> None:
        """Parse-time check of a command line without running it (gpo slurm checks each job's this way)."""
        params = dict(ctx.params)
        self.validate(params.get("config"), explicit_flags(ctx, params))

    def validate(self, config_path: Path | None, flags: dict) -> dict:
        """Every check of the command line alone: the settings file, the settings' own checks, the command's
        `validate` hook. What fails here is a usage error (exit 2), found before anything runs; returns
        the settings file's table."""
        from stages.core.pipeline.config import load_config_file

        try:
            config = load_config_file(config_path) if config_path else {}
            merged, leftover = merge(self, config, flags)
            fields = {f.name for f in dataclasses.fields(self.settings)}
            values = merged if self.check_values is None else self.check_values(merged)
            if values is not None:
                settings = self.settings(**{k: v for k, v in values.items() if k in fields})
                if self.validate_hook is not None:
                    self.validate_hook(settings, leftover)
            runtime = Runtime(**{k: v for k, v in merged.items() if k in self.runtime})
            if "shard" in self.runtime:
                from stages.core.pipeline.runner import parse_shard

                parse_shard(runtime.shard)
            if "dtype" in self.runtime:
                from stages.core.generation.backends import check_runtime

                check_runtime(merged.get("backend") or "auto", runtime.dtype, runtime.device)
        except UsageError:
            raise
        except GpoError as e:
            raise UsageError(str(e)) from None
        return config


COMMANDS: dict[str, StageCommand] = {}


def explicit_flags(ctx, params: dict) -> dict:
    """The options given on the command line (not defaulted): they win over a config file."""
    return {k: v for k, v in params.items() if k not in ("run", "config")
            and ctx.get_parameter_source(k).name not in ("DEFAULT", "DEFAULT_MAP")}


def merge(command: StageCommand, config: dict, flags: dict) -> tuple[dict, dict]:
    """Defaults < config file < explicit flags; returns the merged values and the config's unknown keys."""
    known = command.known()
    config = {str(k).replace("-", "_"): v for k, v in config.items()}
    config.pop("run", None)
    leftover = {k: v for k, v in config.items() if k not in known}
    if leftover and not command.open_config:
        raise GpoError(f"unknown setting(s) for `gpo {command.name}`: {', '.join(sorted(leftover))} "
                       f"(see `gpo {command.name} --help`)")
    defaults = {}
    for f in dataclasses.fields(command.settings):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
    for name in command.runtime:
        defaults[name] = Runtime.__dataclass_fields__[name].default
    for name, e in command.extra.items():
        defaults[name] = e.default
    hints = {**typing.get_type_hints(command.settings), **typing.get_type_hints(Runtime),
             **{k: e.annotation for k, e in command.extra.items()}}
    from_file = {k: coerce(k, v, hints[k]) for k, v in config.items() if k in known}
    merged = {**defaults, **from_file, **flags}
    for f in dataclasses.fields(command.settings):
        merged.setdefault(f.name, None)  # a required setting nobody gave: the settings' check names it
    return merged, leftover


def coerce(name: str, value, hint):
    """A config file's value as the option's type (YAML and TOML are typed already), or one clear error."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for kind in options:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind in (str, Path) and isinstance(value, (str, int, float)) and not isinstance(value, bool) \
                and "\0" not in str(value):  # a NUL byte is no name or text a setting takes (pathlib raises)
            return Path(str(value)) if kind is Path else str(value)
        if typing.get_origin(kind) is list and isinstance(value, list):
            return [str(v) for v in value]
    wanted = " or ".join(getattr(k, "__name__", str(k)) for k in options if k is not type(None))
    raise GpoError(f"setting {name}: expected {wanted}, got {value!r}")


def _option(name: str, annotation, default, help: str, flag: str | None, argument: bool = False) -> inspect.Parameter:
    info = typer.Argument(help=help) if argument else typer.Option(*([flag] if flag else []), help=help)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, info])


def _optional(annotation):
    """A required field still defaults to None on the command line: a config file may supply it."""
    return annotation if type(None) in typing.get_args(annotation) else annotation | None


def stage_command(app: typer.Typer, name: str, settings: type, *, runtime: tuple[str, ...] = (),
                  extra: dict[str, Extra] | None = None, open_config: bool = False, run_required: bool = True,
                  validate: Callable | None = None, check_values: Callable[[dict], dict | None] | None = None):
    """Register `impl(run, settings: dict, runtime: Runtime, **extra)` as `gpo <name>`."""
    extra = extra or {}

    def decorator(impl: Callable) -> Callable:
        command = StageCommand(name, settings, tuple(runtime), extra, impl, open_config, validate, check_values)
        COMMANDS[name] = command
        hints = typing.get_type_hints(settings)
        params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
                  _option("run", Path | None, None, "Run directory (stage folders are created inside)"
                          + ("." if run_required else "; optional here."), "--run"),
                  _option("config", Path | None, None, "YAML, TOML or JSON file of these settings (a stage's "
                          "config.json works too); flags given here win.", "--config")]
        for f in dataclasses.fields(settings):
            required = f.default is dataclasses.MISSING
            params.append(_option(f.name, _optional(hints[f.name]) if required else hints[f.name],
                                  None if required else f.default,
                                  f.metadata.get("help", "") + (" [required]" if required else ""),
                                  f.metadata.get("flag")))
        runtime_hints = typing.get_type_hints(Runtime)
        for r in runtime:
            f = Runtime.__dataclass_fields__[r]
            params.append(_option(r, runtime_hints[r], f.default, f.metadata["help"], None))
        for key, e in extra.items():
            params.append(_option(key, e.annotation, e.default, e.help, e.flag, e.argument))

        @handle_errors
        def callback(ctx: typer.Context, **kwargs):
            run, config_path = kwargs.pop("run"), kwargs.pop("config")
            flags = explicit_flags(ctx, kwargs)
            config = command.validate(config_path, flags)
            from_file = run_dir(config["run"], str(config_path)) if "run" in config else None
            run = run if run is not None else from_file
            if run is None and run_required:
                raise UsageError("missing --run (give it as a flag or in --config)")
            command.call(Path(run) if run is not None else None, flags, config)

        # typer reads the options from __signature__, which typeshed does not declare on functions
        callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        callback.__doc__ = impl.__doc__
        callback.__name__ = name
        callback.__annotations__ = {p.name: p.annotation for p in params}
        app.command(name)(callback)
        return impl
    return decorator


PIPELINE_KEYS = ("run", "stages")


def run_dir(value, where: str) -> Path:
    """`run:` from a settings or pipeline file: a folder name, so text (YAML and TOML also type numbers,
    dates, lists and tables, which are refused here rather than failing inside pathlib)."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise UsageError(f"{where}: `run` must be a folder name (text), not {value!r}")
    return Path(value)


def read_pipeline(path: Path) -> tuple[Path, list[tuple[str, dict]]]:
    """The pipeline file's schema, checked in one place before any stage runs: `run: DIR` (text) and
    `stages:`, a non-empty list whose entries are a stage name or {name: settings table}; each table is
    merged as that stage's --config would be, so a wrong-typed or unknown setting is named here."""
    from stages.core.pipeline.config import load_config_file

    table = load_config_file(path)
    unknown = sorted(set(table) - set(PIPELINE_KEYS))
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; a pipeline holds `run` and `stages`")
    steps = table.get("stages")
    if "run" not in table or not isinstance(steps, list) or not steps:
        raise UsageError(f"{path} needs `run: DIR` and a non-empty `stages:` list of {{name: settings}} entries")
    run = run_dir(table["run"], str(path))
    plan = []
    for i, step in enumerate(steps):
        if isinstance(step, str):
            step = {step: {}}
        if not isinstance(step, dict) or len(step) != 1:
            raise UsageError(f"{path}: stages[{i}] must be one stage name with its settings, e.g. {{locate: {{}}}}")
        (name, values), = step.items()
        if name not in COMMANDS:
            raise UsageError(f"{path}: stages[{i}] is {name!r}; pipelines run {', '.join(COMMANDS)}")
        if values is not None and not isinstance(values, dict):
            raise UsageError(f"{path}: the settings of stages[{i}] ({name}) must be a table")
        if "run" in (values or {}):
            raise UsageError(f"{path}: stages[{i}] ({name}) sets `run`; a pipeline sets it once, at the top")
        try:  # wrong types and unknown settings are named here
            merge(COMMANDS[name], values or {}, {})
        except UsageError:
            raise
        except GpoError as e:
            raise UsageError(str(e)) from None
        plan.append((name, values or {}))
    return run, plan


def run_pipeline(path: Path) -> list[str]:
    """Run the stages a pipeline file lists, in order: `run: DIR` and `stages: [{sample: {...}}, ...]`."""
    try:  # everything wrong with the file is a usage error (exit 2), found before any stage runs
        run, plan = read_pipeline(path)
    except UsageError:
        raise
    except GpoError as e:
        raise UsageError(str(e)) from None
    for name, values in plan:
        COMMANDS[name].call(run, {}, values)
    return [name for name, _ in plan]
