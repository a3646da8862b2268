"""Calibration of the sweep's paired comparisons: false-positive rate and power, old vs new.

Synthetic sweeps of per-row paired differences ``d[s, i] = mu + a_s + b_i + e_si`` (k seeds, n held-out
rows; ``a_s`` a seed's effect, ``b_i`` a row effect shared by every seed, ``e_si`` seed-by-row noise), with
``mu = 0`` for the false-positive rate and ``mu = 3`` true standard errors of the mean for the power:

* OLD: :func:`midblock_plugin.experiments.stats.paired_interval`, the two-level percentile bootstrap the
  sweep used; "significant" = its 95% interval excludes 0. It is slow, so it runs with fewer bootstrap
  draws (``--old-iters``, default 400 instead of 2,000) on fewer sweeps (``--old-sweeps``, default 400:
  a 5% rate is then estimated to about +-2 percentage points).
* NEW: :func:`~midblock_plugin.experiments.stats.paired_comparison` (through its vectorised core, the same
  code path), "significant" = p < 0.05, on ``--new-sweeps`` sweeps (default 10,000: +-0.4 points).

Neither is corrected for multiple comparisons here (a sweep makes 12 against uniform: see ``stats.holm``).

Run: ``python benchmarks/stats_calibration.py`` (about a minute on 2 CPU cores). Pure numpy.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from midblock_plugin.experiments import stats


#: (seed sd, shared row-effect sd, seed-by-row sd)
REGIMES = {
    "seed noise dominates": (1.0, 1.0, 1.0),
    "row effect (shared by seeds) dominates": (0.0, 3.0, 1.0),
    "seed-by-row noise dominates": (0.0, 0.0, 1.0),
    "seed and row terms comparable": (0.3, 1.0, 1.0),
}


def sweeps(rng: np.random.Generator, count: int, k: int, n: int, sds: tuple[float, float, float]) -> np.ndarray:
    sd_seed, sd_row, sd_resid = sds
    return (
        sd_seed * rng.standard_normal((count, k, 1))
        + sd_row * rng.standard_normal((count, 1, n))
        + sd_resid * rng.standard_normal((count, k, n))
    )


def true_se(k: int, n: int, sds: tuple[float, float, float]) -> float:
    sd_seed, sd_row, sd_resid = sds
    return math.sqrt(sd_seed**2 / k + sd_row**2 / n + sd_resid**2 / (k * n))


def old_rate(d: np.ndarray, iters: int) -> float:
    tokens = np.ones(d.shape[2])
    zero = np.zeros(d.shape[1:])
    hits = [stats.paired_interval(x, zero, tokens, iters=iters, rng_seed=j)["significant"] for j, x in enumerate(d)]
    return float(np.mean(hits))


def new_rate(d: np.ndarray) -> float:
    return float(np.mean(stats._paired_arrays(d, interval=False)["p_value"] < 0.05))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100, help="held-out rows per sweep")
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 10])
    ap.add_argument("--old-sweeps", type=int, default=400)
    ap.add_argument("--old-iters", type=int, default=400)
    ap.add_argument("--new-sweeps", type=int, default=10000)
    ap.add_argument("--effect-se", type=float, default=3.0, help="true difference for the power, in standard errors")
    args = ap.parse_args()
    start = time.perf_counter()
    print(
        f"{args.rows} rows; OLD bootstrap: {args.old_sweeps} sweeps x {args.old_iters} draws; NEW: {args.new_sweeps} "
        f"sweeps; power at a true difference of {args.effect_se:g} standard errors; significance at 5%, unadjusted\n"
    )
    print("| regime | seeds | false positives OLD | false positives NEW | power OLD | power NEW |")
    print("|---|---|---|---|---|---|")
    for r, (name, sds) in enumerate(REGIMES.items()):
        for k in args.seeds:
            rng = np.random.default_rng(1000 * r + k)
            shift = args.effect_se * true_se(k, args.rows, sds)
            d_new = sweeps(rng, args.new_sweeps, k, args.rows, sds)
            d_old = sweeps(rng, args.old_sweeps, k, args.rows, sds)
            print(
                f"| {name} | {k} | {old_rate(d_old, args.old_iters):.3f} | {new_rate(d_new):.3f} | "
                f"{old_rate(d_old + shift, args.old_iters):.3f} | {new_rate(d_new + shift):.3f} |",
                flush=True,
            )
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
