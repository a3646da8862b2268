"""Command-line options shared by the commands and the examples, generated once.

The window and method flags are generated from :class:`~midblock_plugin.config.MidBlockConfig`'s
fields and their help text, so a new field, a default or a help change shows up in every
command at once, and :func:`config_from_args` turns the parsed flags back into the config.
"""

from __future__ import annotations

import argparse
from typing import Any

from midblock_plugin.choices import DEFAULT_SEGMENTS  # noqa: F401  (declared once, in the core)
from midblock_plugin.cli.fields import add_dataclass_arguments, flag, values_from_args  # noqa: F401  (flag: re-export)
from midblock_plugin.config import MidBlockConfig
from midblock_plugin.models import DEFAULT_MODEL  # noqa: F401  (the model run / compare use by default; defined once there)
from midblock_plugin.rules import flag_spelling, respell
from midblock_plugin.window import WINDOW_FORMS


#: Fields whose flag is an option with a value starting with "-" (e.g. ``--layers -4--1``).
DASH_VALUE_FLAGS = ("--layers", "--window", "--segments", "--lrs")


def add_config_arguments(
    p: argparse.ArgumentParser, *, skip: tuple[str, ...] = (), defaults: dict[str, Any] | None = None
) -> None:
    """Add one flag per ``MidBlockConfig`` field (window forms first), except ``skip``
    (:func:`~midblock_plugin.cli.fields.add_dataclass_arguments`: help, default and choices from the field).

    ``defaults`` overrides a field's default for this command (e.g. ``segments="01110"``).
    """
    window = p.add_argument_group("window (give at most one; default --window 0.2:0.8)")
    method = p.add_argument_group("method")
    tm_help = MidBlockConfig.__dataclass_fields__["target_modules"].metadata["help"]
    add_dataclass_arguments(
        p,
        MidBlockConfig,
        skip=skip,
        defaults=defaults,
        group_of=lambda name: window if name in WINDOW_FORMS else method,
        help={"target_modules": f"{tm_help} A list is comma-separated, e.g. q_proj,v_proj. (default: attention)"},
    )


def config_from_args(args: argparse.Namespace, **overrides: Any) -> MidBlockConfig:
    """The :class:`MidBlockConfig` of parsed flags (fields without a flag keep their default);
    an error names the flag (``--rank 0: ...``)."""
    try:
        return MidBlockConfig(**values_from_args(args, MidBlockConfig, **overrides))
    except ValueError as exc:
        raise respell(exc, flag_spelling) from None


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
