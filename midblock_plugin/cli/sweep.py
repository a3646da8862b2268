"""``midblock sweep``: every variant x seed at one rank budget, with 95% intervals, the paired
difference to uniform, forgetting on general text and GSM8K (:func:`midblock_plugin.experiments.sweep`).

Shares every flag of ``midblock run`` / ``compare`` (:func:`midblock_plugin.cli.run.common`) and adds
``--variants`` and ``--seeds``; all are generated from ``JobOptions`` fields.
"""

from __future__ import annotations

import argparse

from midblock_plugin.cli.run import ANALYSED_HELP, common, log, options, per_command


def register(sub: argparse._SubParsersAction) -> None:
    from midblock_plugin.experiments.options import SWEEP_SEEDS, SWEEP_VARIANTS

    p = sub.add_parser("sweep", help="every window x seed at one rank budget: 95%% intervals, paired differences to "
                                     "uniform, forgetting, GSM8K; a markdown report and results.json")
    common(p)
    per_command(p, ("variants", "seeds", "segments"),
                {"variants": ",".join(SWEEP_VARIANTS), "seeds": SWEEP_SEEDS, "segments": None},
                help={"segments": ANALYSED_HELP})
    p.set_defaults(func=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    from midblock_plugin.experiments import sweep

    print(f"report: {sweep(options(args), log=log)}")
    return 0
