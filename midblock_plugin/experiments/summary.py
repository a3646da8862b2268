"""From per-seed records (:class:`~.record.SeedRecord`) to the per-variant summary of ``results.json``:
each variant at its own best learning rate (picked on validation rows), means with 95% intervals, the
paired comparisons with uniform LoRA Holm-corrected per measure (:mod:`.stats`), forgetting at
uniform's task gain, GSM8K over seeds with a paired per-question test.

One entry per variant (the ``variants`` list of ``results.json``)::

    mask, variant, layers, window, rank, lora_alpha, trainable_params, uniform_lora_params,
    seeds (count), seed_values,
    best_lr, best_lr_rule,
    by_lr: [{lr, heldout_loss, validation_loss, task_gain, kl, delta_loss}]   (means over seeds),
    heldout_loss: {mean, ci95 ([lo, hi] or null below 3 seeds), per_seed, method},
    vs_uniform:   {mean_diff, ci95, p_value, p_holm, significant, per_seed, method, ...}
                  (uniform: the reference, p null; null without 11111),
    vs_base:      the same against the untrained model (Holm over the variants),
    forgetting:   {general_text, blocks, block_tokens, loss_base,
                   delta_loss, kl: {mean, ci95, per_seed},
                   delta_loss_vs_uniform, kl_vs_uniform: {..., p_value, p_holm, significant},
                   kl_at_uniform_gain: {mean, ci95, per_seed, target_gain_per_seed,
                                        vs_uniform: {mean, ci95, per_seed}, lower_in_every_seed} or null,
                   kl_at_uniform_gain_note}                        (null when skipped),
    gsm8k:        {<filter>: {exact_match, stderr, n, seeds, per_seed,
                              vs_uniform: {mean_diff, ci95, p_value, p_holm, significant}},
                   num_fewshot, limit}                                            (when evaluated),
    steps, step_time_s (median over seeds), peak_memory_bytes (max), peak_memory_kind,
    loss_curve, drift, eval (the first seed's), runs: [every SeedRecord of the variant, every rate]

The paired measures come from :data:`~.record.METRICS`: a new one is picked up here without an edit.
"""

from __future__ import annotations

import statistics
from typing import Any, Optional

import numpy as np

from midblock_plugin.experiments import stats
from midblock_plugin.experiments.options import UNIFORM
from midblock_plugin.experiments.record import METRICS, Metric, SeedRecord


#: Family-wise level of the Holm-corrected comparisons.
ALPHA = 0.05


def _mean(values: list[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _ordered(records: list[SeedRecord]) -> tuple[list[float], list[int]]:
    lrs: list[float] = []
    for r in records:
        if r.lr not in lrs:
            lrs.append(r.lr)
    return lrs, sorted({r.seed for r in records})


def _grid(records: list[SeedRecord], variants: tuple[str, ...]) -> dict[tuple[str, float], list[SeedRecord]]:
    """``(variant, lr) -> records by seed``; every cell must hold every seed."""
    lrs, seeds = _ordered(records)
    grid = {}
    for v in variants:
        for lr in lrs:
            recs = sorted((r for r in records if r.variant == v and r.lr == lr), key=lambda r: r.seed)
            if [r.seed for r in recs] != seeds:
                raise RuntimeError(
                    f"variant {v} at lr {lr:g} was trained with seeds {[r.seed for r in recs]}, others with {seeds}."
                )
            grid[(v, lr)] = recs
    return grid


def choose_lr(by_lr: dict[float, list[SeedRecord]]) -> tuple[float, str]:
    """The rate with the lowest validation answer loss averaged over seeds (ties: the first listed),
    and the rule in words. Held-out test rows are never read here."""
    lrs = list(by_lr)
    if len(lrs) == 1:
        return lrs[0], "the only learning rate"
    means = {lr: _mean([r.validation_loss for r in recs]) for lr, recs in by_lr.items()}
    if any(m is None for m in means.values()):
        raise RuntimeError("several learning rates but no validation loss was measured; cannot choose a rate.")
    best = min(lrs, key=lambda lr: (means[lr], lrs.index(lr)))
    return best, "lowest mean validation answer loss over seeds (GSM8K training rows no variant trains on)"


def _rows(recs: list[SeedRecord], metric: Metric) -> Optional[np.ndarray]:
    rows = [r.rows(metric) for r in recs]
    if not recs or any(x is None for x in rows):
        return None
    return np.array(rows, dtype=np.float64)


def _own(values: np.ndarray, tokens: Optional[np.ndarray]) -> dict[str, Any]:
    """A variant's own mean over seeds with its 95% interval (a comparison with zero)."""
    c = stats.paired_comparison(values, tokens)
    return {"mean": c["mean_diff"], "ci95": c["ci95"], "per_seed": c["per_seed"], "method": c["method"]}


def _reference() -> dict[str, Any]:
    return {
        "mean_diff": 0.0,
        "ci95": [0.0, 0.0],
        "p_value": None,
        "p_holm": None,
        "significant": False,
        "reference": True,
    }


def _holm(comparisons: list[Optional[dict]]) -> None:
    """Add ``p_holm`` and ``significant`` (``p_holm < 0.05``) to each comparison, Holm over those with a p-value."""
    live = [c for c in comparisons if c is not None and not c.get("reference")]
    adjusted = stats.holm([c.get("p_value") for c in live])
    for c, p in zip(live, adjusted):
        c["p_holm"] = p
        c["significant"] = p is not None and p < ALPHA


def _tokens(metric: Metric, base: dict) -> Optional[np.ndarray]:
    return None if metric.tokens is None else np.array(base[metric.tokens], dtype=np.float64)


def _at_uniform_gain(
    grid, v: str, lrs: list[float], best: dict[str, float], base_loss: float
) -> tuple[Optional[dict], str]:
    """KL of ``v`` interpolated over its rate grid to the held-out task gain uniform reached at its best rate,
    per seed; with the per-seed difference to uniform's own KL there."""
    if (UNIFORM, lrs[0]) not in grid:
        return None, f"no uniform variant ({UNIFORM}) was trained, so there is no gain to match."
    if len(lrs) < 2:
        return None, (
            "one learning rate: KL cannot be read at uniform's task gain without a grid of rates to "
            "interpolate over (give --lrs with two or more rates)."
        )
    if grid[(v, lrs[0])][0].general_kl is None:
        return None, "no forgetting measure."
    uni = grid[(UNIFORM, best[UNIFORM])]
    targets = [base_loss - u.heldout_loss for u in uni]
    per_seed = []
    for i, target in enumerate(targets):
        gains = [base_loss - grid[(v, lr)][i].heldout_loss for lr in lrs]
        kls = [grid[(v, lr)][i].mean("general_kl") for lr in lrs]
        per_seed.append(stats.value_at_gain(gains, kls, target))
    out = stats.at_gain_interval(per_seed)
    out["target_gain_per_seed"] = targets
    diffs = [None if p is None else p - u.mean("general_kl") for p, u in zip(per_seed, uni)]
    out["vs_uniform"] = stats.at_gain_interval(diffs)
    out["lower_in_every_seed"] = all(d is not None and d < 0 for d in diffs)
    missing = out["missing"]
    note = (
        "per seed, KL interpolated linearly over the learning-rate grid at the held-out task gain (base minus "
        "tuned loss) uniform LoRA reached at its best rate with the same seed"
    )
    if missing:
        note += (
            f"; {missing} of {len(per_seed)} seeds: uniform's gain lies outside this variant's range of gains "
            "over the grid, so nothing is interpolated there (never extrapolated)"
        )
    return out, note


def _gsm8k(chosen: dict[str, list[SeedRecord]], variants: tuple[str, ...]) -> dict[str, Optional[dict]]:
    """Per variant: GSM8K over seeds per filter, with the paired per-question test against uniform (Holm per filter)."""
    out: dict[str, Optional[dict]] = {}
    for v in variants:
        recs = chosen[v]
        if not all(r.eval for r in recs):
            out[v] = None
            continue
        g: dict[str, Any] = {"num_fewshot": recs[0].eval.get("num_fewshot"), "limit": recs[0].eval.get("limit")}
        for filt in [f for f in recs[0].eval if isinstance(recs[0].eval[f], dict)]:
            if all(r.gsm8k_correct and filt in r.gsm8k_correct for r in recs):
                g[filt] = stats.accuracy_over_seeds([r.gsm8k_correct[filt] for r in recs])
            else:  # no per-question answers: the per-seed scores only
                per = [(r.eval.get(filt) or {}).get("exact_match") for r in recs]
                g[filt] = {
                    "exact_match": _mean(per),
                    "stderr": None,
                    "n": recs[0].eval.get("n_samples"),
                    "seeds": len(recs),
                    "per_seed": per,
                }
        out[v] = g
    uni = chosen.get(UNIFORM)
    filters = {f for g in out.values() if g for f, x in g.items() if isinstance(x, dict)}
    for filt in sorted(filters):
        comps = []
        for v in variants:
            g = out[v]
            if not g or filt not in g:
                continue
            if v == UNIFORM:
                g[filt]["vs_uniform"] = _reference()
                continue
            ok = uni is not None and all(r.gsm8k_correct and filt in r.gsm8k_correct for r in uni + chosen[v])
            c = (
                stats.paired_accuracy_test(
                    [r.gsm8k_correct[filt] for r in chosen[v]], [r.gsm8k_correct[filt] for r in uni]
                )
                if ok
                else None
            )
            if c is not None:
                c.update(p_holm=None, significant=False)
            g[filt]["vs_uniform"] = c
            comps.append(c)
        _holm(comps)
    return out


def summarise(records: list[SeedRecord], base: dict, variants: tuple[str, ...]) -> list[dict[str, Any]]:
    """One summary entry per variant (in ``variants`` order) from every per-seed record; each variant is
    reported at its own best learning rate, and the paired differences use the same held-out rows and
    seeds for every variant."""
    grid = _grid(records, variants)
    lrs, seeds = _ordered(records)
    best, rule = {}, {}
    for v in variants:
        best[v], rule[v] = choose_lr({lr: grid[(v, lr)] for lr in lrs})
    chosen = {v: grid[(v, best[v])] for v in variants}
    base_loss = float(base["heldout_loss"])
    entries: dict[str, dict[str, Any]] = {}
    for v in variants:
        recs = chosen[v]
        first = recs[0]
        entries[v] = {
            "mask": v,
            "variant": v,
            "layers": first.layers,
            "window": first.window,
            "rank": first.rank,
            "lora_alpha": first.lora_alpha,
            "trainable_params": first.trainable_params,
            "uniform_lora_params": first.uniform_lora_params,
            "seeds": len(recs),
            "seed_values": seeds,
            "best_lr": best[v],
            "best_lr_rule": rule[v],
            "by_lr": [
                {
                    "lr": lr,
                    "heldout_loss": _mean([r.heldout_loss for r in grid[(v, lr)]]),
                    "validation_loss": _mean([r.validation_loss for r in grid[(v, lr)]]),
                    "task_gain": base_loss - _mean([r.heldout_loss for r in grid[(v, lr)]]),
                    "kl": _mean([r.mean("general_kl") for r in grid[(v, lr)]]),
                    "delta_loss": _mean([r.mean("general_delta_loss") for r in grid[(v, lr)]]),
                }
                for lr in lrs
            ],
        }
    # the paired metrics (METRICS): own interval, vs uniform (Holm per metric)
    for metric in METRICS:
        tokens = _tokens(metric, base)
        uni = _rows(chosen[UNIFORM], metric) if UNIFORM in chosen else None
        comps = []
        for v in variants:
            values = _rows(chosen[v], metric)
            target = entries[v] if metric.group is None else entries[v].setdefault(metric.group, {})
            if values is None:
                target[metric.name] = None
                continue
            target[metric.name] = _own(values, tokens)
            if uni is None:
                target[metric.vs_uniform] = None
            elif v == UNIFORM:
                target[metric.vs_uniform] = _reference()
            else:
                c = stats.paired_comparison(values - uni, tokens)
                c.update(p_holm=None, significant=False)
                target[metric.vs_uniform] = c
                comps.append(c)
        _holm(comps)
    # against the untrained model (held-out loss; Holm over the variants)
    tokens = np.array(base["heldout_row_tokens"], dtype=np.float64)
    base_rows = np.array([base["heldout_row_loss"]] * len(seeds), dtype=np.float64)
    comps = []
    for v in variants:
        c = stats.paired_comparison(np.array([r.heldout_row_loss for r in chosen[v]]) - base_rows, tokens)
        c.update(p_holm=None, significant=False)
        entries[v]["vs_base"] = c
        comps.append(c)
    _holm(comps)
    gsm = _gsm8k(chosen, variants)
    gt = dict(base.get("general_text") or {})
    for v in variants:
        e, recs = entries[v], chosen[v]
        f = e.get("forgetting")
        if f is not None and f.get("kl") is None:
            f = None
        if f is not None:
            f.update(
                general_text=gt.get("source"),
                blocks=gt.get("blocks"),
                block_tokens=gt.get("block_tokens"),
                loss_base=gt.get("loss"),
            )
            f["kl_at_uniform_gain"], f["kl_at_uniform_gain_note"] = _at_uniform_gain(grid, v, lrs, best, base_loss)
        e["forgetting"] = f
        if gsm[v] is not None:
            e["gsm8k"] = gsm[v]
            e["eval"] = recs[0].eval
        times = [r.step_time_s for r in recs if r.step_time_s is not None]
        e.update(
            steps=recs[0].steps,
            step_time_s=statistics.median(times) if times else None,
            peak_memory_bytes=max(r.peak_memory_bytes for r in recs),
            peak_memory_kind=recs[0].peak_memory_kind,
            loss_curve=recs[0].loss_curve,
            drift=recs[0].drift,
            runs=[r.to_dict() for lr in lrs for r in grid[(v, lr)]],  # every rate and seed, with per-row values
        )
    return [entries[v] for v in variants]
