"""Command-line flags generated from the fields of the dataclass that owns them.

One function, :func:`add_dataclass_arguments`, turns each field of a dataclass
(``MidBlockConfig``, ``EvalSettings``, ``JobOptions``, ...) into a flag: the name from the
field (``lora_alpha`` -> ``--lora-alpha``), the help from ``metadata["help"]``, the default
from the field, the choices from its ``Literal`` annotation
(:mod:`midblock_plugin.choices`), ``--x/--no-x`` for a bool. :func:`values_from_args` reads
them back. A new option is one field: no flag is typed by hand beside it.

Field metadata the generator reads (all optional but ``help``):

==============  ===========================================================================
``help``        the help text (``%`` is escaped for argparse)
``flag``        the flag's name when it is not ``--field-name``
``cli``         ``False``: no flag for this field (set in code only)
``parse``       a function turning the flag's text into the value (e.g. a comma list)
``metavar``     argparse's metavar
``positional``  ``True``: a positional argument (``nargs`` from ``metadata["nargs"]``)
``default``     the default shown in the help when the field's is ``None`` (e.g. "the preset")
``group``       the title of the argument group the flag is listed under
``negate``      a bool flag that sets the field to ``False`` (``--quiet`` for ``progress``)
==============  ===========================================================================

Fields with ``init=False`` (computed on validation) get no flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Iterable, Literal, Optional, Union, get_args, get_origin

from midblock_plugin.choices import values as choice_values


def flag(name: str) -> str:
    """The flag of a field: ``lora_alpha`` -> ``--lora-alpha``."""
    return "--" + name.replace("_", "-")


def _unwrap(tp: Any) -> Any:
    """``Optional[X]`` and ``X | None`` -> ``X`` (other unions are kept)."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_literal(tp: Any) -> bool:
    return get_origin(tp) is Literal or (
        get_origin(tp) in (Union, types.UnionType)
        and all(get_origin(a) is Literal for a in get_args(tp) if a is not type(None))
    )


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _help(f: dataclasses.Field, default: Any, kind: Any) -> str:
    text = str(f.metadata.get("help", "")).replace("%", "%%")
    shown = f.metadata.get("default")
    if shown is None and default is not None and kind is not bool and not isinstance(default, (list, tuple)):
        shown = default
    if shown is not None and "default" not in text.lower():
        text = f"{text} (default: {str(shown).replace('%', '%%')})"
    return text


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    *,
    skip: Iterable[str] = (),
    only: Optional[Iterable[str]] = None,
    defaults: Optional[dict[str, Any]] = None,
    group_of: Optional[typing.Callable[[str], Any]] = None,
    required: Iterable[str] = (),
    help: Optional[dict[str, str]] = None,
) -> list[str]:
    """Add one flag per field of dataclass ``cls`` to ``parser``; returns the field names added.

    ``skip`` / ``only`` select fields; ``defaults`` overrides a field's default for this command;
    ``group_of(name)`` returns the argument group (or parser) a field goes into; fields in
    ``required`` become required flags; ``help`` replaces a field's help for this command.
    """
    hints = typing.get_type_hints(cls)
    skip, defaults, required = set(skip), dict(defaults or {}), set(required)
    only = None if only is None else list(only)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = only if only is not None else list(fields)
    added = []
    groups: dict[str, Any] = {}
    for name in names:
        f = fields[name]
        if name in skip or f.metadata.get("cli") is False or not f.init:
            continue
        title = f.metadata.get("group")
        if group_of:
            target = group_of(name)
        elif title:
            target = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        else:
            target = parser
        default = defaults.get(name, _default(f))
        kind = _unwrap(hints[name])
        md = f.metadata
        kw: dict[str, Any] = {"help": (help or {}).get(name) or _help(f, default, kind)}
        if md.get("metavar"):
            kw["metavar"] = md["metavar"]
        if md.get("positional"):
            if "nargs" in md:
                kw["nargs"] = md["nargs"]
                kw["default"] = default
            if md.get("parse"):
                kw["type"] = md["parse"]
            target.add_argument(name, **kw)
            added.append(name)
            continue
        kw["default"] = default
        if kind is bool and md.get("negate"):
            kw["action"] = "store_false"
        elif kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            if md.get("parse"):
                kw["type"] = md["parse"]
            elif _is_literal(kind):
                kw["choices"] = choice_values(kind)
            elif kind in (int, float):
                kw["type"] = kind
            if _is_literal(kind) and "choices" not in kw:
                kw["choices"] = choice_values(kind)
            if name in required:
                kw["required"] = True
        target.add_argument(md.get("flag") or flag(name), dest=name, **kw)
        added.append(name)
    return added


def values_from_args(args: argparse.Namespace, cls: type, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments of ``cls`` found in ``args`` (fields without a flag are left out), with ``overrides``."""
    out = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
    out.update(overrides)
    return out
