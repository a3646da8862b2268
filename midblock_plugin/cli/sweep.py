"""``midblock sweep``: every variant x seed at one rank budget, with 95% intervals, the paired
difference to uniform, forgetting on general text and GSM8K (:func:`midblock_plugin.experiments.sweep`).

Shares every flag of ``midblock run`` / ``compare`` (:func:`midblock_plugin.cli.run.common`) and adds
``--variants`` and ``--seeds``.
"""

from __future__ import annotations

import argparse

from midblock_plugin.cli.options import DEFAULT_SEGMENTS
from midblock_plugin.cli.run import common, log, options


def register(sub: argparse._SubParsersAction) -> None:
    from midblock_plugin.experiments.options import SWEEP_VARIANTS

    p = sub.add_parser("sweep", help="every window x seed at one rank budget: 95%% intervals, paired differences to "
                                     "uniform, forgetting, GSM8K; a markdown report and results.json")
    common(p)
    p.add_argument("--variants", default=",".join(SWEEP_VARIANTS),
                   help="comma-separated segment masks, each once; 11111 (uniform) is the reference of the paired "
                        "differences (default %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant: --seed, --seed + 1, ... (>= 1, default 3)")
    p.add_argument("--segments", help=f"the variant the layer-wise analysis is run on (first seed), one of --variants "
                                      f"(default {DEFAULT_SEGMENTS} when it is one, else the last variant)")
    p.set_defaults(func=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    from midblock_plugin.experiments import sweep

    print(f"report: {sweep(options(args), log=log)}")
    return 0
