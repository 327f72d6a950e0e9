"""Settings files: the one place a YAML, TOML or JSON file of settings is read and merged with flags.

Every stage command takes `--config FILE`; its keys are the command's option names (`max_new_tokens` or
`max-new-tokens`). A stage's own `RUN/<stage>/config.json` can be fed back as is: its `settings` table is
read. Flags given on the command line win over the file; the file wins over the defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

from stages.core.pipeline.errors import GpoError


SUFFIXES = (".yaml", ".yml", ".toml", ".json")


def _toml():
    """tomllib (Python 3.11+) or its backport tomli (a dependency on 3.10, see pyproject.toml)."""
    try:
        import tomllib
    except ImportError:
        try:
            import tomli as tomllib
        except ImportError:
            raise GpoError("reading TOML on Python 3.10 needs tomli: pip install tomli") from None
    return tomllib


def load_config_file(path: Path) -> dict:
    """A table of settings from a .yaml/.yml, .json or TOML file; `[trl]` is merged into the top level
    (it only groups `gpo train`'s extra TRL arguments); a stage's config.json gives its `settings`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:  # checked before reading: a typo'd name is not parsed as something else
        kind = f"extension {suffix!r}" if suffix else "no extension"
        raise GpoError(f"{path}: settings files are YAML, TOML or JSON, not {kind}; use .yaml, .yml, .toml or .json")
    try:
        text = path.read_text()
    except OSError as e:
        raise GpoError(f"cannot read config file {path}: {e.strerror}") from None
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise GpoError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GpoError(f"{path} is not valid JSON: {e}") from None
    else:
        toml = _toml()
        try:
            data = toml.loads(text)
        except toml.TOMLDecodeError as e:
            raise GpoError(f"{path} is not valid TOML: {e}") from None
    if not isinstance(data, dict):
        raise GpoError(f"{path} must hold a table of settings")
    if isinstance(data.get("settings"), dict) and "stage" in data:  # RUN/<stage>/config.json
        data = dict(data["settings"], **(data.get("trl_args") or {}))
    trl = data.pop("trl", {}) or {}
    return {str(k).replace("-", "_"): v for k, v in {**data, **trl}.items()}
