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
import signal
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
    install_signal_handlers()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):
            print(
                f"midblock {args.command}: terminated by {exc.name}; the run is recorded as incomplete",
                file=sys.stderr,
            )
            return 128 + exc.signum
        print(f"midblock {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError) as exc:  # WindowError, json and config errors are ValueErrors
        print(f"midblock {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return 2


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM and Kubernetes send before a kill) or SIGHUP, handled like Ctrl-C: the
    run directory records ``incomplete`` with the signal, one line is printed, the exit code is
    128 + the signal number (143 / 129)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.name = signal.Signals(self.signum).name
        super().__init__(f"terminated by {self.name}")


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` (in the main thread; elsewhere a no-op)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, _raise_terminated)
        except ValueError:  # not the main thread of the main interpreter
            return


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
