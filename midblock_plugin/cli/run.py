"""``midblock run`` and ``midblock compare``: the main job and the variant comparison
(:mod:`midblock_plugin.experiments`; ``compare`` is a ``midblock sweep`` with one seed).

Every flag is generated from a :class:`~midblock_plugin.experiments.options.JobOptions` field
(:func:`common`, reused by :mod:`.sweep`); this module only chooses which fields each command shows
and their per-command defaults."""

from __future__ import annotations

import argparse
import sys

from midblock_plugin.choices import DEFAULT_SEGMENTS
from midblock_plugin.cli.fields import add_dataclass_arguments, values_from_args


#: Fields that only some commands show: the window(s), the seed count and the recommendation to test.
PER_COMMAND = ("segments", "variants", "seeds", "window_from")


def common(p: argparse.ArgumentParser, **defaults) -> None:
    """The flags every job shares: one per :class:`JobOptions` field but :data:`PER_COMMAND`; the exit
    statuses as the epilog (3: the evaluation failed after training, the trained models kept)."""
    from midblock_plugin.cli import EXIT_STATUSES
    from midblock_plugin.experiments.options import JobOptions

    add_dataclass_arguments(p, JobOptions, skip=PER_COMMAND, required=("output_dir",), defaults=defaults)
    p.epilog = EXIT_STATUSES


def per_command(p: argparse.ArgumentParser, names: tuple[str, ...], defaults: dict, help: dict | None = None) -> None:
    """The :data:`PER_COMMAND` fields ``names`` with this command's defaults (and help, where it differs)."""
    from midblock_plugin.experiments.options import JobOptions

    add_dataclass_arguments(p, JobOptions, only=names, defaults=defaults, help=help)


#: The help of ``--variants`` of compare and sweep.
VARIANTS_HELP = (
    "comma-separated segment masks, each once; 'recommended' = the layers recommended in --window-from. "
    "The layer-wise analysis runs on the uniform 11111 model (trained for it when not listed)"
)


def register(sub: argparse._SubParsersAction) -> None:
    from midblock_plugin.experiments.options import DEFAULT_VARIANTS

    p = sub.add_parser(
        "run",
        help="the main job: train mid-block LoRA on GSM8K, evaluate, analyse (on a uniform model "
        "trained for it), report",
    )
    common(p)
    per_command(p, ("segments",), {"segments": DEFAULT_SEGMENTS})
    p.set_defaults(func=run)
    p = sub.add_parser(
        "compare", help="train uniform and mid-block variants at one rank budget and one seed; a markdown report"
    )
    common(p)
    per_command(
        p,
        ("variants", "window_from"),
        {"variants": ",".join(DEFAULT_VARIANTS), "segments": None},
        help={"variants": VARIANTS_HELP},
    )
    p.set_defaults(func=run_compare)


def options(args: argparse.Namespace):
    """The :class:`JobOptions` of the parsed flags, validated (a ``ValueError`` naming the flag)."""
    from midblock_plugin.experiments import JobOptions

    return JobOptions(**values_from_args(args, JobOptions))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from midblock_plugin.experiments import run_job

    print(f"report: {run_job(options(args), log=log)}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from midblock_plugin.experiments import compare

    print(f"report: {compare(options(args), log=log)}")
    return 0
