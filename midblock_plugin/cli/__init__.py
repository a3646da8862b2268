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

from midblock_plugin.evaluation.preflight import EVAL_FAILED_EXIT, EvaluationError  # import-cheap (no torch)


#: Modules that contribute a subcommand through ``register(subparsers)``.
SUBCOMMAND_MODULES = (
    "midblock_plugin.cli.plan",
    "midblock_plugin.cli.eval",
    "midblock_plugin.cli.analyze",
    "midblock_plugin.cli.run",
    "midblock_plugin.cli.sweep",
    "midblock_plugin.cli.export",
)


#: The exit statuses of every ``midblock`` command (the epilog of ``midblock --help``).
EXIT_STATUSES = (
    "exit status: 0 done; 2 a bad input or setup, refused before any work (the message names the flag); "
    f"{EVAL_FAILED_EXIT} the evaluation failed after training (run / compare / sweep; eval: lm-eval failed): every model "
    "trained before it is saved, the run is recorded incomplete; 130 / 143 / 129 interrupted by "
    "SIGINT / SIGTERM / SIGHUP; 1 an unexpected error (a traceback)."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="midblock",
        description="Mid-Block Efficient Tuning: plan, evaluate and analyse layer-windowed fine-tuning.",
        epilog=EXIT_STATUSES,
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
    except EvaluationError as exc:  # the models trained before it are saved; only the evaluation is missing
        print(f"midblock {args.command}: the evaluation failed: {exc}", file=sys.stderr)
        return EVAL_FAILED_EXIT
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
        print(f"midblock {args.command}: error: {user_message(spelled(exc, parser, args.command))}", file=sys.stderr)
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


def spelled(exc: BaseException, parser: argparse.ArgumentParser, command: str) -> BaseException:
    """An :class:`~midblock_plugin.rules.OptionError` no surface has spelled yet (raised by the core,
    e.g. ``num_layers`` by the plan), spelled as ``command`` names its fields: the flag or
    positional whose destination is the field (``--num-layers``, ``MODEL_DIR``). Anything else as it is."""
    from midblock_plugin.rules import OptionError, respell

    if not isinstance(exc, OptionError) or exc.spelling is not None:
        return exc
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    command_parser = sub.choices.get(command) if sub is not None else None
    names: dict[str, str] = {}
    for action in getattr(command_parser, "_actions", ()):
        if action.option_strings:
            names.setdefault(
                action.dest, next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
            )
        elif action.dest != "help":
            names.setdefault(action.dest, action.metavar if isinstance(action.metavar, str) else action.dest.upper())
    return respell(exc, names.get) if exc.field in names else exc


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
