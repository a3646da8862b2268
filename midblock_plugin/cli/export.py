"""``midblock export``: make a mid-block adapter loadable by a serving engine, or merge it into the
base; every export checks its own logits against the original adapter.

The flags are generated from :class:`~midblock_plugin.export.options.ExportOptions` by
:func:`~midblock_plugin.cli.fields.add_dataclass_arguments` (help, defaults, choices); ``--target``'s
choices and help from :data:`~midblock_plugin.export.targets.TARGETS`, read when the parser is
built. Only ``--json`` (how the command prints) is this module's own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from midblock_plugin.cli.fields import add_dataclass_arguments, values_from_args
from midblock_plugin.export import targets
from midblock_plugin.export.options import ExportOptions


def register(sub: argparse._SubParsersAction) -> None:
    adapters = ", ".join(name for name, t in targets.TARGETS.items() if not t.merges)
    p = sub.add_parser(
        "export",
        help=f"export an adapter for a serving engine ({adapters}) or merged into the base; self-checked",
        description="Write ADAPTER_DIR in the form a serving engine loads, then check it: the logits of base + export "
        f"(through PEFT; through transformers for {', '.join(targets.merging_targets())}) must equal those of base + "
        "the original adapter on a few prompts (float32). The exit status is 1 if they differ. See docs/serving.md.",
    )
    add_option_arguments(p, ExportOptions)
    p.add_argument(
        "--json", action="store_true", help="print the report as JSON (also written to DIR/midblock-export.json)"
    )
    p.set_defaults(func=run)


def add_option_arguments(p: argparse.ArgumentParser, cls: type) -> None:
    """The flags of ``cls``'s fields through :func:`~midblock_plugin.cli.fields.add_dataclass_arguments`, plus what
    it does not read yet: ``metadata["choices"]`` / ``metadata["help"]`` given as functions (called now) and
    ``metadata["repeatable"]`` (a flag given several times); a field without a default is a required flag."""
    fields = dataclasses.fields(cls)
    repeatable = [f for f in fields if f.metadata.get("repeatable")]
    add_dataclass_arguments(
        p,
        cls,
        skip=[f.name for f in repeatable],
        required=[f.name for f in fields if f.default is dataclasses.MISSING and not f.metadata.get("positional")],
        help={f.name: f.metadata["help"]() for f in fields if callable(f.metadata.get("help"))},
    )
    for f in fields:
        if callable(f.metadata.get("choices")):
            next(a for a in p._actions if a.dest == f.name).choices = f.metadata["choices"]()
    for f in repeatable:
        p.add_argument(
            f.metadata.get("flag") or "--" + f.name.replace("_", "-"),
            dest=f.name,
            action="append",
            metavar=f.metadata.get("metavar"),
            help=f.metadata["help"],
        )


def options_from_args(args: argparse.Namespace, cls: type) -> Any:
    """The ``cls`` instance of parsed flags (a repeatable flag's list becomes a tuple)."""
    values = values_from_args(args, cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("repeatable") and values.get(f.name) is not None:
            values[f.name] = tuple(values[f.name])
    return cls(**values)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import sys

    from midblock_plugin.export.pipeline import export_adapter

    options = options_from_args(args, ExportOptions)  # every value check that needs no file, before any work
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    # with --json, stdout carries the report only: libraries' own prints (DeepSpeed's logger binds to
    # the stdout of its import) go to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        report = export_adapter(**options.keywords(), log=log)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"wrote {report['output']} ({', '.join(report['files'])})")
        print(f"serve: {report['command']}")
    if not report["passed"]:
        print(
            f"midblock export: error: the {options.target} export does not reproduce the original adapter's logits "
            f"(see {report['output']}/midblock-export.json); do not serve it.",
            file=sys.stderr,
        )
        return 1
    return 0
