"""The ``midblock`` command line: ``plan``, ``eval``, ``analyze``, ``run``, ``compare``, ``export``.

One module per command in this package, each exposing ``register(subparsers)``, which adds
its parser and sets ``func``; flags are generated from the dataclass fields that own them
(:mod:`.fields`, :mod:`.options`). This file only assembles them; a subcommand module that
fails to import stops ``midblock`` with an error naming it (never a silently missing command).
Registering must stay cheap (no torch import) so ``midblock --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys


#: Modules that contribute a subcommand through ``register(subparsers)``.
SUBCOMMAND_MODULES = (
    "midblock_plugin.cli.plan",
    "midblock_plugin.cli.eval",
    "midblock_plugin.cli.analyze",
    "midblock_plugin.cli.run",
    "midblock_plugin.cli.sweep",
    "midblock_plugin.cli.export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="midblock",
        description="Mid-Block Efficient Tuning: plan, evaluate and analyse layer-windowed fine-tuning.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # every subcommand ships with the package: a broken one is a bug, said at once
            raise ImportError(
                f"midblock: the module of a subcommand, {name}, fails to import: {type(exc).__name__}: {exc}",
                name=name,
            ) from exc
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from midblock_plugin.cli.options import join_dash_values

    parser = build_parser()
    args = parser.parse_args(join_dash_values(list(sys.argv[1:] if argv is None else argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"midblock {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError) as exc:  # WindowError, json and config errors are ValueErrors
        print(f"midblock {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return 2


def user_message(exc: BaseException) -> str:
    """The one-line message of a user error (ValueError, OSError, ImportError): the path of an
    OS error and the install command of a missing optional package are always named."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:  # raised by the OS, not by midblock
        text = f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, ImportError):
        from midblock_plugin.rules import INSTALL_HINTS, MissingDependency

        top = (exc.name or "").split(".")[0]
        if not isinstance(exc, MissingDependency) and top in INSTALL_HINTS:
            text = f"{text}; the optional package {INSTALL_HINTS[top][0]!r} is missing: {INSTALL_HINTS[top][1]}."
    return text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
