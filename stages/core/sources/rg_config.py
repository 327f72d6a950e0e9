"""Query options of a `reasoning-gym:` source, typed by the dataset's own config dataclass.

    reasoning-gym:chain_sum?size=64&seed=1&min_terms=2&max_terms=3&min_digits=1&max_digits=2
    reasoning-gym:basic_arithmetic?operators=+,-&allow_parentheses=false

Every field of the dataset's config class (reasoning-gym's registry holds it) is a valid key; the
query string's text is converted to that field's annotated type, so reasoning-gym's own validation
sees the values it expects. Lists and tuples are comma-separated.
"""

from __future__ import annotations

import dataclasses
import types
import typing

from stages.core.pipeline.errors import GpoError

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def config_class(name: str) -> type:
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        raise GpoError(f"reasoning-gym cannot make dataset '{name}': no such dataset ({len(DATASETS)} are registered)")
    return DATASETS[name][1]


def _field_types(name: str) -> dict[str, object]:
    cls = config_class(name)
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls) if f.init}


def option_names(name: str) -> list[str]:
    return list(_field_types(name))


def typed_options(name: str, params: dict[str, str]) -> dict[str, object]:
    """{'min_terms': '2', 'operators': '+,-'} -> {'min_terms': 2, 'operators': ['+', '-']}."""
    fields = _field_types(name)
    out = {}
    for key, text in params.items():
        if key not in fields:
            raise GpoError(f"reasoning-gym:{name} has no option {key!r}; valid: {', '.join(fields)}")
        try:
            out[key] = _convert(text, fields[key])
        except ValueError as e:
            raise GpoError(f"reasoning-gym:{name} option {key}={text!r}: {e} "
                           f"(valid options: {', '.join(fields)})") from None
    return out


def _convert(text: str, tp: object) -> object:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[int] and friends
        if text.lower() == "none" and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(text, arg)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is typing.Literal:
        for arg in args:
            if str(arg) == text:
                return arg
        raise ValueError(f"must be one of {', '.join(map(str, args))}")
    if origin in (list, tuple) or tp in (list, tuple):
        item = args[0] if args else str
        items = [_convert(part.strip(), item) for part in text.split(",") if part.strip()]
        # The dataclass defaults are tuples even where annotated list[str]; keep what the default uses.
        return tuple(items) if origin is tuple or tp is tuple else items
    if tp is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError("is not a boolean (true/false)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("is not an integer") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("is not a number") from None
    if tp is str or tp is typing.Any:
        return text
    raise ValueError(f"has type {tp!r}, which a query string cannot express")
