"""The ``midblock`` command line: ``plan``, ``eval``, ``analyze``, ``run``, ``compare``.

One module per command in this package, each exposing ``register(subparsers)``, which adds
its parser and sets ``func``; shared flags are generated once in :mod:`.options`. This
file only assembles them. Registering must stay cheap (no torch import) so
``midblock --help`` is instant.
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
        except ModuleNotFoundError as exc:  # a subcommand whose module is not installed
            if exc.name and exc.name.startswith("midblock_plugin"):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from midblock_plugin.cli.options import join_dash_values

    parser = build_parser()
    args = parser.parse_args(join_dash_values(list(sys.argv[1:] if argv is None else argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from midblock_plugin.window import WindowError

    try:
        return int(args.func(args) or 0)
    except (WindowError, ValueError, FileNotFoundError) as exc:
        print(f"midblock {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
