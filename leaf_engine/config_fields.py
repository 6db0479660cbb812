"""A setting is one dataclass field: its default, range and help are written there once.

    lam: float = setting(0.5, "Hybrid weight of the original-prompt term.", ge=0, le=1)

`check_fields(config)`, called from `__post_init__`, checks every field against its type and
range and raises `ConfigError` naming the field. The CLI's options (`leaf_cli/options.py`)
and the API's request schemas (`app/schemas.py`) are generated from the same fields, so the
three cannot disagree.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from leaf_engine.errors import ConfigError

Kind = Literal["bool", "int", "float", "str", "choice"]


@dataclass(frozen=True)
class FieldSpec:
    """What one setting accepts, read from its dataclass field."""

    name: str
    kind: Kind
    default: Any  # dataclasses.MISSING when the field is required
    help: str
    optional: bool = False  # None is a valid value
    choices: tuple[Any, ...] = ()
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_length: int | None = None  # strings only
    default_help: str | None = None  # what a None default means, for help texts

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    def bounds(self) -> str:
        """The range in interval notation, e.g. `[0, 1]` or `(0, inf)`."""
        low = f"[{self.ge:g}" if self.ge is not None else (
            f"({self.gt:g}" if self.gt is not None else "(-inf")
        high = f"{self.le:g}]" if self.le is not None else (
            f"{self.lt:g})" if self.lt is not None else "inf)")
        return f"{low}, {high}"


def setting(
    default: Any = dataclasses.MISSING, help: str = "", *, ge: float | None = None,
    gt: float | None = None, le: float | None = None, lt: float | None = None,
    min_length: int | None = None, default_help: str | None = None,
) -> Any:
    """A dataclass field carrying its help and range (`ge`/`gt`/`le`/`lt`, inclusive or not)."""
    metadata = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt,
                "min_length": min_length, "default_help": default_help}
    return dataclasses.field(default=default, metadata=metadata)


@functools.cache
def field_specs(cls: type) -> tuple[FieldSpec, ...]:
    """The settings of a config dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind, optional, choices = _kind(hints[f.name], f.name)
        meta = f.metadata
        out.append(FieldSpec(
            name=f.name, kind=kind, default=f.default, help=meta.get("help", ""),
            optional=optional, choices=choices, ge=meta.get("ge"), gt=meta.get("gt"),
            le=meta.get("le"), lt=meta.get("lt"), min_length=meta.get("min_length"),
            default_help=meta.get("default_help"),
        ))
    return tuple(out)


def check_fields(config: Any) -> None:
    """Raise `ConfigError` naming the first field whose value is of the wrong type or range."""
    for spec in field_specs(type(config)):
        check_value(spec, getattr(config, spec.name))


def check_value(spec: FieldSpec, value: Any) -> None:
    name = spec.name
    if value is None:
        if not spec.optional:
            raise ConfigError(f"{name} must be set", field=name)
        return
    if spec.kind == "choice":
        if value not in spec.choices:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, spec.choices))}; "
                              f"got {value!r}", field=name)
    elif spec.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}", field=name)
    elif spec.kind == "str":
        if not isinstance(value, str) or len(value.strip()) < (spec.min_length or 0):
            raise ConfigError(f"{name} must be a non-empty string, got {value!r}"
                              if spec.min_length else f"{name} must be a string, got {value!r}",
                              field=name)
    else:
        integer = spec.kind == "int"
        ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and _within(spec, value)
        if not ok:
            if integer and spec.ge is not None and (spec.le, spec.lt, spec.gt) == (None,) * 3:
                raise ConfigError(f"{name} must be an integer >= {spec.ge:g}, got {value!r}",
                                  field=name)
            what = "an integer" if integer else "a number"
            raise ConfigError(f"{name} must be {what} in {spec.bounds()}, got {value!r}",
                              field=name)


def _within(spec: FieldSpec, value: float) -> bool:
    return ((spec.ge is None or value >= spec.ge) and (spec.gt is None or value > spec.gt)
            and (spec.le is None or value <= spec.le) and (spec.lt is None or value < spec.lt))


def _kind(hint: Any, name: str) -> tuple[Kind, bool, tuple[Any, ...]]:
    optional = False
    if get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        optional = len(args) < len(get_args(hint))
        if len(args) != 1:
            raise TypeError(f"setting {name}: unions other than X | None are not supported")
        hint = args[0]
    if get_origin(hint) is Literal:
        return "choice", optional, get_args(hint)
    for kind, python in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if hint is python:
            return kind, optional, ()  # type: ignore[return-value]
    raise TypeError(f"setting {name}: type {hint!r} is not bool, int, float, str or a Literal")
