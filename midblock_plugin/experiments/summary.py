"""From per-seed records to the per-variant summary of ``results.json``: means, 95% intervals
(:mod:`.stats`), the paired difference to uniform and to the base, forgetting, GSM8K pooled
over seeds.

One entry per variant (the ``variants`` list of ``results.json``)::

    mask, variant, layers, window, rank, lora_alpha, trainable_params, uniform_lora_params,
    seeds (count), seed_values,
    heldout_loss: {mean, ci95: [lo, hi], per_seed},
    vs_uniform:   {mean_diff, ci95, significant}   (0 and [0, 0] for uniform; null without 11111),
    vs_base:      {mean_diff, ci95, significant}   (tuned minus untrained, same rows),
    forgetting:   {general_text, blocks, block_tokens, loss_base,
                   delta_loss: {mean, ci95, per_seed}, kl: {mean, ci95, per_seed},
                   delta_loss_vs_uniform, kl_vs_uniform: {mean_diff, ci95, significant}}   (null when skipped),
    gsm8k:        {strict-match: {exact_match, stderr, n, seeds}, flexible-extract: {...}}  (when evaluated),
    steps, step_time_s (median over seeds), peak_memory_bytes (max), peak_memory_kind,
    loss_curve, drift, eval (the first seed's, as before), runs: [per-seed records]
"""

from __future__ import annotations

import statistics
from typing import Any, Optional

import numpy as np

from midblock_plugin.experiments import stats


UNIFORM = "11111"


def _rows(records: list[dict]) -> np.ndarray:
    return np.array([r["heldout_row_loss"] for r in records], dtype=np.float64)


def _blocks(records: list[dict], key: str) -> Optional[np.ndarray]:
    if not records or not all("forgetting" in r for r in records):
        return None
    return np.array([r["forgetting"]["per_block"][key] for r in records], dtype=np.float64)


def _forgetting(records: list[dict], base: dict, uniform: Optional[list[dict]]) -> Optional[dict[str, Any]]:
    """Forgetting of one variant over its seeds: means and intervals over (seeds, blocks), and the
    paired difference to uniform on the same blocks and seeds."""
    if _blocks(records, "kl") is None:
        return None
    out: dict[str, Any] = dict(base.get("general_text") or {})
    out["general_text"] = out.pop("source", None)
    out["loss_base"] = out.pop("loss", None)
    for key in ("delta_loss", "kl"):
        per_block = _blocks(records, key)
        out[key] = stats.mean_interval(per_block)
        ref = _blocks(uniform, key) if uniform else None
        out[f"{key}_vs_uniform"] = None if ref is None else stats.paired_interval(per_block, ref, np.ones(per_block.shape[1]))
    return out


def _gsm8k(records: list[dict]) -> Optional[dict[str, Any]]:
    evals = [r.get("eval") for r in records]
    if not all(evals):
        return None
    out: dict[str, Any] = {}
    for filt in ("strict-match", "flexible-extract"):
        per_seed = [dict(e.get(filt) or {}, n=e.get("n_samples")) for e in evals]
        out[filt] = stats.accuracy(per_seed)
    out["num_fewshot"] = evals[0].get("num_fewshot")
    out["limit"] = evals[0].get("limit")
    return out


def summarise(records: list[dict], base: dict, variants: tuple[str, ...]) -> list[dict[str, Any]]:
    """One summary entry per variant (in ``variants`` order) from every per-seed record; the paired
    differences use the same held-out rows and seeds for every variant."""
    tokens = np.array(base["heldout_row_tokens"], dtype=np.float64)
    by_variant = {v: sorted((r for r in records if r["variant"] == v), key=lambda r: r["seed"]) for v in variants}
    seeds = [r["seed"] for r in by_variant[variants[0]]]
    for v, recs in by_variant.items():
        if [r["seed"] for r in recs] != seeds:
            raise RuntimeError(f"variant {v} was trained with seeds {[r['seed'] for r in recs]}, others with {seeds}.")
    base_rows = np.array([base["heldout_row_loss"]] * len(seeds), dtype=np.float64)  # deterministic: one value per row
    uniform = _rows(by_variant[UNIFORM]) if UNIFORM in by_variant else None
    out = []
    for v in variants:
        recs = by_variant[v]
        first = recs[0]
        loss = _rows(recs)
        entry: dict[str, Any] = {
            "mask": v, "variant": v, "layers": first["layers"], "window": first["window"], "rank": first["rank"],
            "lora_alpha": first["lora_alpha"], "trainable_params": first["trainable_params"],
            "uniform_lora_params": first["uniform_lora_params"], "seeds": len(recs), "seed_values": seeds,
            "heldout_loss": stats.interval(loss, tokens),
            "vs_uniform": None if uniform is None else stats.paired_interval(loss, uniform, tokens),
            "vs_base": stats.paired_interval(loss, base_rows, tokens),
            "forgetting": _forgetting(recs, base, by_variant.get(UNIFORM)),
        }
        gsm = _gsm8k(recs)
        if gsm is not None:
            entry["gsm8k"] = gsm
            entry["eval"] = first.get("eval")
        times = [r["step_time_s"] for r in recs if r.get("step_time_s") is not None]
        entry.update(
            steps=first["steps"], step_time_s=statistics.median(times) if times else None,
            peak_memory_bytes=max(r["peak_memory_bytes"] for r in recs), peak_memory_kind=first["peak_memory_kind"],
            loss_curve=first["loss_curve"], drift=first["drift"],
            runs=[dict(r) for r in recs],  # per seed, with its per-row losses and per-block forgetting
        )
        out.append(entry)
    return out
