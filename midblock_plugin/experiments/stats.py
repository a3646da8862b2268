"""Intervals for a sweep: a two-level (seeds, then held-out rows) percentile bootstrap.

A variant's held-out answer loss is measured per seed on the same held-out rows; one seed's
value is the token-weighted mean over rows (``sum of token losses / tokens``). The statistic
of a variant is the mean of that value over seeds.

Method (:func:`interval`, :func:`paired_interval`): ``iters`` bootstrap draws; each draw
resamples the seeds with replacement (k of k) and, independently, the held-out rows with
replacement (n of n, the *same* row draw for every seed and every variant), and recomputes
the statistic. The 95% interval is the 2.5th and 97.5th percentile of the draws. The paired
difference of a variant to uniform applies one draw to both and takes the difference per
draw, so the variation the two share (hard rows, a seed's data order) cancels; uniform
against itself is exactly 0 with interval [0, 0]. With few seeds the seed level is coarse
(3 seeds give 10 distinct draws) and tends to understate the seed-to-seed spread; the
report prints the per-seed values beside the interval for that reason.

Everything is deterministic for a given ``rng_seed``. Pure numpy; no torch.

>>> import numpy as np
>>> loss = np.array([[2.0, 4.0], [3.0, 5.0]])      # 2 seeds x 2 rows (summed token loss)
>>> tokens = np.array([1, 1])
>>> round(point(loss, tokens), 3)
3.5
>>> paired_interval(loss, loss, tokens)["mean_diff"], paired_interval(loss, loss, tokens)["ci95"]
(0.0, [0.0, 0.0])
"""

from __future__ import annotations

from typing import Any

import numpy as np


#: Bootstrap draws of every interval (deterministic for a given ``rng_seed``).
ITERS = 2000
LEVEL = 0.95
METHOD = ("two-level percentile bootstrap: each draw resamples the seeds (k of k) and the held-out rows "
          "(n of n, the same rows for every seed and variant), 95% = 2.5th-97.5th percentile of the draws")


def _check(loss: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    loss = np.asarray(loss, dtype=np.float64)
    tokens = np.asarray(tokens, dtype=np.float64)
    if loss.ndim != 2 or tokens.ndim != 1 or loss.shape[1] != tokens.shape[0]:
        raise ValueError(f"per-row losses must be (seeds, rows) and tokens (rows,); got {loss.shape} and {tokens.shape}.")
    if loss.shape[0] < 1 or loss.shape[1] < 1 or tokens.sum() <= 0:
        raise ValueError("an interval needs at least one seed, one held-out row and one answer token.")
    keep = tokens > 0  # a row with no scored token carries no information (its answer was cut off)
    return loss[:, keep], tokens[keep]


def point(loss: np.ndarray, tokens: np.ndarray) -> float:
    """Mean over seeds of the token-weighted mean loss over rows.

    ``loss[s, i]``: summed answer-token loss of row ``i`` under seed ``s``; ``tokens[i]``: its answer tokens."""
    loss, tokens = _check(loss, tokens)
    return float((loss.sum(axis=1) / tokens.sum()).mean())


def _draws(shape: tuple[int, int], iters: int, rng_seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(rng_seed)
    k, n = shape
    return rng.integers(0, k, size=(iters, k)), rng.integers(0, n, size=(iters, n))


def _boot(loss: np.ndarray, tokens: np.ndarray, seeds: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The statistic under every draw: (iters,)."""
    tok = tokens[rows].sum(axis=1)  # (iters,)
    per_seed = loss[:, rows].sum(axis=2)  # (k, iters)
    per_seed = per_seed / np.where(tok > 0, tok, np.nan)[None, :]
    picked = np.take_along_axis(per_seed.T, seeds, axis=1)  # (iters, k)
    return np.nanmean(picked, axis=1)


def _ci(draws: np.ndarray) -> list[float]:
    lo, hi = np.nanpercentile(draws, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return [float(lo), float(hi)]


def interval(loss: np.ndarray, tokens: np.ndarray, iters: int = ITERS, rng_seed: int = 0) -> dict[str, Any]:
    """``{"mean", "ci95": [lo, hi], "per_seed"}`` of one variant's held-out loss."""
    loss, tokens = _check(loss, tokens)
    seeds, rows = _draws(loss.shape, iters, rng_seed)
    per_seed = (loss.sum(axis=1) / tokens.sum()).tolist()
    return {"mean": point(loss, tokens), "ci95": _ci(_boot(loss, tokens, seeds, rows)), "per_seed": per_seed}


def paired_interval(loss: np.ndarray, reference: np.ndarray, tokens: np.ndarray, iters: int = ITERS,
                    rng_seed: int = 0) -> dict[str, Any]:
    """``{"mean_diff", "ci95", "significant"}`` of ``loss - reference``, both (seeds, rows) on the same
    rows and seeds (row ``i`` and seed ``s`` mean the same in both); ``significant``: the interval
    excludes 0."""
    if np.shape(loss) != np.shape(reference):
        raise ValueError(f"a paired difference needs the same seeds and rows; got {np.shape(loss)} and {np.shape(reference)}.")
    loss, _ = _check(loss, tokens)
    reference, tokens = _check(reference, tokens)
    seeds, rows = _draws(loss.shape, iters, rng_seed)
    diff = loss - reference
    if not diff.any():
        return {"mean_diff": 0.0, "ci95": [0.0, 0.0], "significant": False}
    ci = _ci(_boot(diff, tokens, seeds, rows))
    return {"mean_diff": point(diff, tokens), "ci95": ci, "significant": bool(ci[0] > 0 or ci[1] < 0)}


def mean_interval(values: np.ndarray, iters: int = ITERS, rng_seed: int = 0) -> dict[str, Any]:
    """``{"mean", "ci95"}`` of a (seeds, items) array of per-item values (e.g. per-block forgetting),
    by the same two-level bootstrap with every item weighted equally."""
    values = np.asarray(values, dtype=np.float64)
    return interval(values, np.ones(values.shape[1]), iters=iters, rng_seed=rng_seed)


def accuracy(per_seed: list[dict]) -> dict[str, Any]:
    """GSM8K exact match pooled over seeds: the mean of the per-seed accuracies, its standard error
    ``sqrt(sum se_s^2) / k`` (independent seeds), ``n`` per seed and the seed count; ``per_seed`` holds
    ``{"exact_match", "stderr", "n"}`` dicts (a filter of :func:`~.train.gsm8k_summary`)."""
    vals = [p for p in per_seed if p and p.get("exact_match") is not None]
    if not vals:
        return {"exact_match": None, "stderr": None, "n": None, "seeds": 0}
    k = len(vals)
    acc = sum(float(p["exact_match"]) for p in vals) / k
    ses = [p.get("stderr") for p in vals]
    se = None if any(s is None or not np.isfinite(s) for s in ses) else float(np.sqrt(sum(float(s) ** 2 for s in ses)) / k)
    return {"exact_match": acc, "stderr": se, "n": vals[0].get("n"), "seeds": k}
