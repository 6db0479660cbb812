"""Click options generated from a config dataclass's settings (`leaf_engine.config_fields`),
so a default, range or help text is written once, in the engine."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import click

from leaf_engine.config_fields import FieldSpec, field_specs

F = TypeVar("F", bound=Callable[..., Any])


def config_options(
    cls: type, names: Sequence[str], *, flags: Mapping[str, str] | None = None,
    paths: Sequence[str] = (),
) -> Callable[[F], F]:
    """Add one option per named field of `cls`, in order. `flags` renames an option
    (`{"lam": "--lambda"}`); fields in `paths` take a file path (returned as a string)."""
    by_name = {spec.name: spec for spec in field_specs(cls)}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"{cls.__name__} has no settings {unknown}")

    def decorate(command: F) -> F:
        for name in reversed(names):  # click applies decorators bottom-up
            flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
            command = _option(by_name[name], flag, name in paths)(command)
        return command

    return decorate


def _option(spec: FieldSpec, flag: str, path: bool) -> Callable[[F], F]:
    help_text = spec.help
    if spec.default_help:
        help_text += f"  [default: {spec.default_help}]"
    kwargs: dict[str, Any] = {"help": help_text}
    if spec.required:
        kwargs["required"] = True
    else:
        kwargs["default"] = spec.default
        kwargs["show_default"] = spec.default is not None and spec.kind != "bool"
    if spec.kind == "bool":
        return click.option(f"{flag}/--no-{flag[2:]}" if spec.default else flag, spec.name,
                            is_flag=True, **kwargs)
    kwargs["type"] = _type(spec, path)
    return click.option(flag, spec.name, **kwargs)


def _type(spec: FieldSpec, path: bool) -> click.ParamType:
    if path:
        return click.Path(dir_okay=True)
    if spec.kind == "choice":
        return click.Choice([str(c) for c in spec.choices])
    if spec.kind in ("int", "float"):
        low = spec.ge if spec.ge is not None else spec.gt
        high = spec.le if spec.le is not None else spec.lt
        if spec.kind == "int":
            # An exclusive integer bound is the next integer in.
            low = None if low is None else int(low) + (spec.gt is not None)
            high = None if high is None else int(high) - (spec.lt is not None)
            return click.IntRange(low, high)
        return click.FloatRange(low, high, min_open=spec.gt is not None,
                                max_open=spec.lt is not None)
    return click.STRING


def config_kwargs(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The options' values that are fields of `cls` (the rest belong to the command)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}
