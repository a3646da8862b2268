"""The job's outputs: figures, ``report.md`` (:data:`~midblock_plugin.io.REPORT_MD`) and
``results.json`` (:data:`~midblock_plugin.io.RESULTS_JSON`), written through :mod:`midblock_plugin.io`."""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from midblock_plugin import io
from midblock_plugin.experiments.options import JobOptions


if TYPE_CHECKING:
    from midblock_plugin.plan import MidBlockPlan

LOSS_PNG = io.JOB_LOSS_PNG
DRIFT_PNG = io.JOB_DRIFT_PNG
#: The sweep's two figures: held-out loss per variant with intervals; task gain against forgetting.
HELDOUT_PNG = io.JOB_HELDOUT_PNG
TRADEOFF_PNG = io.JOB_TRADEOFF_PNG


def plots(records: list[dict], out: Path, num_layers: int) -> dict[str, str]:
    """Training-loss curves and final per-layer drift of every variant; paths relative to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for r in records:
        xs, ys = zip(*r["loss_curve"]) if r["loss_curve"] else ([], [])
        ax.plot(xs, ys, label=r["variant"], marker=".")
    ax.set_xlabel("step"), ax.set_ylabel("training loss"), ax.set_title("Training loss"), ax.legend()
    fig.tight_layout(), fig.savefig(out / LOSS_PNG, dpi=110), plt.close(fig)
    paths["loss"] = LOSS_PNG
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for r in records:
        xs = list(range(num_layers))
        ax.plot(xs, [r["drift"].get(str(i), 0.0) for i in xs], label=r["variant"], marker="o", ms=3)
    ax.set_xlabel("decoder layer"), ax.set_ylabel("||W_t - W_0|| / ||W_0||"), ax.set_title("Per-layer drift at the end of training")
    ax.legend(), fig.tight_layout(), fig.savefig(out / DRIFT_PNG, dpi=110), plt.close(fig)
    paths["drift"] = DRIFT_PNG
    return paths


def _err(mean: float, ci: list[float]) -> list[list[float]]:
    return [[mean - ci[0]], [ci[1] - mean]]


def sweep_plots(entries: list[dict], base: dict, out: Path) -> dict[str, str]:
    """The paper's two claims as figures: held-out answer loss per variant (mean, 95% interval,
    every seed, the base as a line) and task gain against forgetting (KL on general text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for i, e in enumerate(entries):
        h = e["heldout_loss"]
        ax.errorbar([i], [h["mean"]], yerr=_err(h["mean"], h["ci95"]), fmt="o", capsize=4, color="C0")
        ax.scatter([i] * len(h["per_seed"]), h["per_seed"], s=10, color="C1", zorder=3)
    ax.axhline(base["heldout_loss"], color="grey", ls="--", label="base (no tuning)")
    ax.set_xticks(range(len(entries)), [e["mask"] for e in entries])
    ax.set_xlabel("variant (segment mask)"), ax.set_ylabel("held-out answer loss")
    ax.set_title("Held-out answer loss: mean and 95% interval (dots: seeds)"), ax.legend()
    fig.tight_layout(), fig.savefig(out / HELDOUT_PNG, dpi=110), plt.close(fig)
    paths["heldout"] = HELDOUT_PNG
    if all(e.get("forgetting") for e in entries):
        fig, ax = plt.subplots(figsize=(6.5, 4.0))
        for i, e in enumerate(entries):
            kl, gain = e["forgetting"]["kl"], e["vs_base"]
            g = -gain["mean_diff"]
            ax.errorbar([kl["mean"]], [g], xerr=_err(kl["mean"], kl["ci95"]),
                        yerr=[[g - (-gain["ci95"][1])], [-gain["ci95"][0] - g]], fmt="o", capsize=4, color=f"C{i}",
                        label=e["mask"])
        ax.set_xlabel("forgetting: mean KL(base || tuned) on general text")
        ax.set_ylabel("task gain: base - tuned held-out loss")
        ax.set_title("Task gain against forgetting (95% intervals); up-left is better"), ax.legend()
        fig.tight_layout(), fig.savefig(out / TRADEOFF_PNG, dpi=110), plt.close(fig)
        paths["tradeoff"] = TRADEOFF_PNG
    return paths


def _fmt_acc(g: Optional[dict], filt: str) -> str:
    if not g or filt not in g or g[filt].get("exact_match") is None:
        return "not run"
    a, se = g[filt]["exact_match"], g[filt].get("stderr")
    return f"{a:.3f} ± {se:.3f}" if se is not None and math.isfinite(se) else f"{a:.3f}"


def _ci(d: dict, key: str = "mean", digits: int = 4) -> str:
    lo, hi = d["ci95"]
    return f"{d[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _verdict(d: Optional[dict], lower: str, higher: str) -> str:
    if d is None:
        return "–"
    if d["ci95"] == [0.0, 0.0] and d["mean_diff"] == 0.0:
        return "(reference)"
    if not d["significant"]:
        return "not significant"
    return lower if d["ci95"][1] < 0 else higher


def _findings(entries: list[dict], seeds: int) -> list[str]:
    """Plain sentences: which differences are significant at 95% and which are not."""
    lines = []
    uni = next((e for e in entries if e["mask"] == "11111"), None)
    for e in entries:
        vb = e["vs_base"]
        lines.append(f"- `{e['mask']}` vs the untrained base: held-out loss {vb['mean_diff']:+.4f} "
                     f"[{vb['ci95'][0]:+.4f}, {vb['ci95'][1]:+.4f}]: "
                     + _verdict(vb, "significantly lower (tuning helped)", "significantly higher (tuning hurt)") + ".")
    if uni is None:
        lines.append("- No uniform variant (`11111`) was trained, so nothing is compared with uniform LoRA.")
    for e in entries:
        if uni is None or e is uni:
            continue
        d = e["vs_uniform"]
        lines.append(f"- `{e['mask']}` vs uniform `11111`: held-out loss {d['mean_diff']:+.4f} "
                     f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]: "
                     + _verdict(d, "significantly lower than uniform (better on the task)",
                                "significantly higher than uniform (worse on the task)") + ".")
        f = e.get("forgetting")
        if f and f.get("kl_vs_uniform"):
            k = f["kl_vs_uniform"]
            lines.append(f"  Forgetting (KL) vs uniform: {k['mean_diff']:+.5f} [{k['ci95'][0]:+.5f}, {k['ci95'][1]:+.5f}]: "
                         + _verdict(k, "significantly less than uniform", "significantly more than uniform") + ".")
    if seeds == 1:
        lines.append("- With one seed the intervals cover the held-out rows only, not the variation between seeds "
                     "(initialisation, data order): use `midblock sweep --seeds 3` or more before drawing conclusions.")
    elif seeds < 3:
        lines.append(f"- With {seeds} seeds the seed level of the bootstrap is coarse and understates seed-to-seed "
                     "variation: use `--seeds 3` or more.")
    return lines


def write_report(opts: JobOptions, source: str, base: dict, entries: list[dict], plan: "MidBlockPlan",
                 analysis: Optional[dict], out: Path, title: str, no_figures: Optional[str] = None) -> Path:
    """Write the figures, ``report.md`` and ``results.json`` into ``out``; return the report's path.

    ``entries``: the per-variant summaries of :func:`~.summary.summarise`; ``plan`` is the plan of one
    trained variant (the model's architecture and depth). ``no_figures``: why figures cannot be
    drawn (matplotlib missing); the report says it instead."""
    from midblock_plugin.experiments import stats
    from midblock_plugin.experiments.recipe import describe

    num_layers = plan.num_layers
    figs: dict[str, str] = {}
    if no_figures is None:
        try:
            figs = plots(entries, out, num_layers)
            figs.update(sweep_plots(entries, base, out))
        except ImportError as exc:  # found at start, yet it does not import: say so, keep the results
            no_figures = (f"Figures were skipped: matplotlib could not be imported ({exc}). Reinstall it with "
                          '`pip install "midblock-plugin[analysis]"` to get the loss, drift and analysis plots.')
    skipped = "Figure skipped (see the note under Setup)."
    seeds = entries[0]["seeds"]
    g0 = entries[0].get("gsm8k") or {}
    n = (g0.get("strict-match") or {}).get("n")
    try:
        protocol = opts.eval_settings().protocol_info() if not opts.skip_eval else None
    except AttributeError:  # an EvalSettings without protocols
        protocol = None
    if opts.skip_eval:
        eval_line = "- GSM8K evaluation: not run (--skip-eval); "
    elif (opts.eval_protocol or "lm-eval") == "paper":
        eval_line = (f"- GSM8K, the paper's protocol (lm-eval's gsm8k task, zero-shot, greedy, 64 new tokens, last number = "
                     f"`flexible-extract`): {('limit ' + str(opts.eval_limit)) if opts.eval_limit else 'full test set'}; ")
    else:
        eval_line = (f"- GSM8K via lm-eval's own task: {('limit ' + str(opts.eval_limit)) if opts.eval_limit else 'full test set'}, "
                     f"{'task default' if opts.num_fewshot is None else opts.num_fewshot}-shot, greedy, {opts.max_gen_toks} new tokens; ")
    gt = base.get("general_text")
    lines = [
        f"# {title}", "",
        "Every number below was measured in this run; nothing is carried over from the paper.", "",
        "## Setup", "",
        f"- model: `{opts.model}` ({plan.architecture}, L={num_layers}); data: {source}",
        f"- {describe(opts.recipe or 'default', num_layers)}",
        f"- preset `{opts.preset}`: {opts.num_examples} training examples"
        + (f" (shuffled with seed {opts.shuffle_seed})" if opts.shuffle_seed is not None else " (file order)")
        + f", max steps {opts.max_steps}, batch {opts.batch_size} x grad-accum {opts.grad_accum}, "
        f"lr {opts.lr}, {opts.max_length} tokens, seed {opts.seed}, bf16 {bool(opts.bf16)}",
        f"- seeds per variant: {seeds} ({', '.join(map(str, entries[0]['seed_values']))}); a seed sets LoRA's initialisation, "
        "dropout and the data order, which is the same for every variant of that seed",
        f"- LoRA on attention projections; uniform baseline rank r={opts.rank}, matched budget (rank floor(r*L/n)), "
        f"alpha policy `{opts.alpha_policy}`" + (f", alpha {opts.lora_alpha:g}" if opts.lora_alpha else "")
        + f", dropout {opts.lora_dropout}",
        eval_line + f"held-out loss = mean token loss of the gold answers of the last {opts.heldout} GSM8K test rows",
        (f"- forgetting: base vs tuned on {gt['blocks']} blocks of {gt['block_tokens']} tokens of {gt['source']}: "
         "the change in mean token loss, and the mean KL(base || tuned) of the next-token distributions"
         if gt else "- forgetting: not measured (--skip-forgetting)"),
        f"- 95% intervals: {stats.METHOD}; {stats.ITERS} draws",
        "",
        *([f"**Note.** {no_figures}", ""] if no_figures else []),
        "## Results", "",
        "| variant | layers | rank | trainable params | GSM8K strict | GSM8K flexible | n | held-out answer loss [95% CI] | step time (s) | peak memory (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {base['variant']} | – | – | 0 | {_fmt_acc(_base_gsm(base), 'strict-match')} | {_fmt_acc(_base_gsm(base), 'flexible-extract')} | "
        f"{(base.get('eval') or {}).get('n_samples', '–')} | {base['heldout_loss']:.4f} | – | – |",
    ]
    for e in entries:
        g = e.get("gsm8k")
        lines.append(
            f"| `{e['mask']}` | {e['window']} | {e['rank']} | {e['trainable_params']:,} | {_fmt_acc(g, 'strict-match')} | "
            f"{_fmt_acc(g, 'flexible-extract')} | {((g or {}).get('strict-match') or {}).get('n') or '–'} | "
            f"{_ci(e['heldout_loss'])} | {e['step_time_s']:.3f} | {e['peak_memory_bytes'] / 1024**3:.2f} |"
        )
    accs = [((e.get("gsm8k") or {}).get(f) or {}).get("exact_match") for e in entries for f in ("strict-match", "flexible-extract")]
    accs += [(( _base_gsm(base) or {}).get(f) or {}).get("exact_match") for f in ("strict-match", "flexible-extract")]
    lines += [""]
    if not opts.skip_eval:
        lines.append(f"Accuracy is exact match ± its standard error over n={n} questions per seed"
                     + (f", averaged over {seeds} seeds (standard error sqrt(sum se^2)/k)" if seeds > 1 else "")
                     + "; differences in accuracy are not significant unless the intervals separate. ")
        if all(a == 0 for a in accs if a is not None):
            lines.append(f"Every model scored 0 on GSM8K here (n={n}): at this size and budget accuracy does not separate "
                         "variants, and the held-out answer loss is the measure that does. ")
    lines += ["Step time is the median training step; "
              f"peak memory is {entries[0]['peak_memory_kind'].replace('_', ' ')} during training.", "",
              "## Against uniform and against the base", "",
              "Paired differences on the same held-out rows and seeds (negative = lower loss than the reference).", "",
              "| variant | held-out loss - uniform [95% CI] | vs uniform | held-out loss - base [95% CI] | vs base |",
              "|---|---|---|---|---|"]
    for e in entries:
        vu, vb = e["vs_uniform"], e["vs_base"]
        lines.append(f"| `{e['mask']}` | {_ci(vu, 'mean_diff') if vu else '–'} | {_verdict(vu, 'lower', 'higher')} | "
                     f"{_ci(vb, 'mean_diff')} | {_verdict(vb, 'lower', 'higher')} |")
    lines += ["", "## Forgetting", ""]
    if gt:
        lines += [f"General text: {gt['source']}; the base model's mean token loss on it is {gt['loss']:.4f}. "
                  "Change in loss = tuned minus base (> 0: worse on general text); KL = mean over tokens of "
                  "KL(base || tuned) of the next-token distributions (0 = unchanged).", "",
                  "| variant | change in general-text loss [95% CI] | KL(base \|\| tuned) [95% CI] | KL - uniform's [95% CI] | vs uniform |",
                  "|---|---|---|---|---|"]
        for e in entries:
            f = e["forgetting"]
            ku = f.get("kl_vs_uniform")
            lines.append(f"| `{e['mask']}` | {_ci(f['delta_loss'], digits=5)} | {_ci(f['kl'], digits=5)} | "
                         f"{_ci(ku, 'mean_diff', digits=5) if ku else '–'} | {_verdict(ku, 'less', 'more')} |")
    else:
        lines.append("Not measured (--skip-forgetting).")
    lines += ["", "## What is significant", "", *_findings(entries, seeds), "",
              "Significant = the 95% interval of the paired difference excludes 0. This is one model, one data set and "
              "one budget; it says nothing about other sizes.", "",
              "## Figures", "",
              f"![held-out loss per variant]({figs['heldout']})" if "heldout" in figs else skipped, "",
              f"![task gain against forgetting]({figs['tradeoff']})" if "tradeoff" in figs else
              (skipped if no_figures else "No forgetting measure, so no trade-off figure."), "",
              "## Training loss", "", f"![loss curves]({figs['loss']})" if "loss" in figs else skipped, "",
              ("First seed of each variant. " if seeds > 1 else "") + "Training loss per step.", "",
              "## Per-layer drift", "", f"![drift]({figs['drift']})" if "drift" in figs else skipped, "",
              "Relative weight change of each layer's trained matrices at the end of training (zero outside a variant's window"
              + ("; first seed" if seeds > 1 else "") + ").", ""]
    if seeds > 1:
        lines += ["## Per seed", "", "| variant | seed | held-out answer loss | change in general-text loss | KL |", "|---|---|---|---|---|"]
        for e in entries:
            for i, r in enumerate(e["runs"]):
                f = r.get("forgetting") or {}
                lines.append(f"| `{e['mask']}` | {r['seed']} | {e['heldout_loss']['per_seed'][i]:.4f} | "
                             + (f"{f['delta_loss']:.5f} | {f['kl']:.5f} |" if f else "– | – |"))
        lines.append("")
    lines += ["## Layer-wise analysis", ""]
    if analysis:
        rec = analysis["recommendation"]
        png = analysis["paths"].get("png")
        lines += [
            f"Base vs tuned (`{analysis.get('variant') or entries[0]['mask']}`) on GSM8K prompts: "
            f"[analysis.json]({os.path.relpath(analysis['paths']['json'], out)}), [analysis.csv]({os.path.relpath(analysis['paths']['csv'], out)}).", "",
            f"![analysis]({os.path.relpath(png, out)})" if png else skipped, "",
            f"Recommended window: layers {rec['window']} (mask {rec.get('segments')}); rule: {rec['rule']}", "",
        ]
    else:
        lines += ["Skipped (--skip-analysis).", ""]
    io.write_json(out / io.RESULTS_JSON, {"options": asdict(opts), "source": source, "interval_method": stats.METHOD,
                                          "eval_protocol": protocol,
                                          "base": {k: v for k, v in base.items() if k != "eval_report"},
                                          "variants": entries, "analysis": analysis, "figures": figs,
                                          "figures_skipped": no_figures})
    return io.write_text_atomic(out / io.REPORT_MD, "\n".join(lines) + "\n")


def _base_gsm(base: dict) -> Optional[dict]:
    """The base model's GSM8K score in the shape of a summary's ``gsm8k``."""
    ev = base.get("eval")
    if not ev:
        return None
    return {f: {"exact_match": ev[f]["exact_match"], "stderr": ev[f]["stderr"], "n": ev.get("n_samples")}
            for f in ("strict-match", "flexible-extract") if f in ev}
