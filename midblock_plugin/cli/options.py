"""Command-line options shared by the commands and the examples, generated once.

The window and method flags are generated from :class:`~midblock_plugin.config.MidBlockConfig`'s
fields and their help text, so a new field, a default or a help change shows up in every
command at once, and :func:`config_from_args` turns the parsed flags back into the config.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from midblock_plugin.choices import DEFAULT_SEGMENTS  # noqa: E402,F401  (declared once, in the core)
from midblock_plugin.config import ALPHA_POLICIES, BUDGETS, MODES, TARGET_PRESETS, MidBlockConfig
from midblock_plugin.models import DEFAULT_MODEL  # noqa: F401  (the model run / compare use by default; defined once there)
from midblock_plugin.window import WINDOW_FORMS


_CHOICES = {"mode": MODES, "budget": BUDGETS, "alpha_policy": ALPHA_POLICIES}
#: Fields whose flag is an option with a value starting with "-" (e.g. ``--layers -4--1``).
DASH_VALUE_FLAGS = ("--layers", "--window", "--segments")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(p: argparse.ArgumentParser, *, skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None) -> None:
    """Add one flag per ``MidBlockConfig`` field (window forms first), except ``skip``.

    ``defaults`` overrides a field's default for this command (e.g. ``segments="01110"``).
    """
    defaults = defaults or {}
    fields = {f.name: f for f in dataclasses.fields(MidBlockConfig)}
    window = p.add_argument_group("window (give at most one; default --window 0.2:0.8)")
    method = p.add_argument_group("method")
    for name, f in fields.items():
        if name in skip:
            continue
        group = window if name in WINDOW_FORMS else method
        default = defaults.get(name, f.default)
        help_text = f.metadata.get("help", "")
        if f.type in ("bool", bool):
            group.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif name in _CHOICES:
            group.add_argument(flag(name), choices=_CHOICES[name], default=default, help=help_text)
        elif name == "rank":
            group.add_argument(flag(name), type=int, default=default, help=help_text)
        elif name in ("lora_alpha", "lora_dropout"):
            group.add_argument(flag(name), type=float, default=default, help=help_text)
        elif name == "target_modules":
            group.add_argument(
                flag(name), default=default,
                help=f"{help_text} A list is comma-separated, e.g. q_proj,v_proj.",
            )
        else:
            group.add_argument(flag(name), default=default, help=help_text)


def config_from_args(args: argparse.Namespace, **overrides: Any) -> MidBlockConfig:
    """The :class:`MidBlockConfig` of parsed flags (fields without a flag keep their default)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(MidBlockConfig):
        if hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    tm = values.get("target_modules")
    if isinstance(tm, str) and ("," in tm or tm not in TARGET_PRESETS):
        values["target_modules"] = [t.strip() for t in tm.split(",") if t.strip()]
    values.update(overrides)
    return MidBlockConfig(**values)


def join_dash_values(argv: list[str], flags: tuple[str, ...] = DASH_VALUE_FLAGS) -> list[str]:
    """``["--layers", "-4--1"]`` -> ``["--layers=-4--1"]``: argparse would read a value that
    starts with ``-`` (and is not a plain negative number) as another option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in flags and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1][1:2].isdigit():
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out
