"""``midblock sweep``: every variant x seed x learning rate at one rank budget, each variant at its best
rate (picked on validation rows), with 95% intervals, the Holm-corrected paired differences to uniform,
forgetting on general text (also at uniform's task gain) and GSM8K (:func:`midblock_plugin.experiments.sweep`).

Shares every flag of ``midblock run`` / ``compare`` (:func:`midblock_plugin.cli.run.common`) and adds
``--variants``, ``--seeds`` and ``--window-from``; all are generated from ``JobOptions`` fields.
"""

from __future__ import annotations

import argparse

from midblock_plugin.cli.run import VARIANTS_HELP, common, log, options, per_command


def register(sub: argparse._SubParsersAction) -> None:
    from midblock_plugin.experiments.options import SWEEP_SEEDS, SWEEP_VARIANTS

    p = sub.add_parser(
        "sweep",
        help="every window x seed x learning rate at one rank budget, each window at its best "
        "rate: 95%% intervals, Holm-corrected paired differences to uniform, forgetting "
        "(also at equal task gain), GSM8K; a markdown report and results.json",
    )
    common(p)
    per_command(
        p,
        ("variants", "seeds", "window_from"),
        {"variants": ",".join(SWEEP_VARIANTS), "seeds": SWEEP_SEEDS, "segments": None},
        help={"variants": VARIANTS_HELP},
    )
    p.set_defaults(func=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    from midblock_plugin.experiments import sweep

    print(f"report: {sweep(options(args), log=log)}")
    return 0
