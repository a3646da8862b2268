"""The job's outputs: figures, ``report.md`` (:data:`~midblock_plugin.io.REPORT_MD`) and
``results.json`` (:data:`~midblock_plugin.io.RESULTS_JSON`), written through :mod:`midblock_plugin.io`.

The paired measures are printed from :data:`~.record.METRICS` (a new metric needs no edit here); the
word "significant" is printed only from a comparison's ``significant`` (Holm-corrected p < 0.05), and
with fewer than 3 seeds no interval is printed at all (:func:`~.stats.paired_comparison`)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from midblock_plugin import io, storage
from midblock_plugin.analysis.report import window_words
from midblock_plugin.experiments.options import UNIFORM, JobOptions
from midblock_plugin.experiments.record import METRICS, Metric
from midblock_plugin.figures import legend_outside, pyplot
from midblock_plugin.rules import install_hint


if TYPE_CHECKING:
    from midblock_plugin.plan import MidBlockPlan

LOSS_PNG = io.JOB_LOSS_PNG
DRIFT_PNG = io.JOB_DRIFT_PNG
#: The sweep's two figures: held-out loss per variant with intervals; task gain against forgetting.
HELDOUT_PNG = io.JOB_HELDOUT_PNG
TRADEOFF_PNG = io.JOB_TRADEOFF_PNG
#: Paired differences to uniform with their intervals (every metric of :data:`~.record.METRICS`).
PAIRED_PNG = io.JOB_PAIRED_PNG
#: Fewest seeds for an interval (:data:`midblock_plugin.experiments.stats.MIN_SEEDS`).
MIN_SEEDS = 3


def loss_figure(records: list[dict]):
    """Training loss per step of every variant (legend outside the axes)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    for r in records:
        xs, ys = zip(*r["loss_curve"]) if r["loss_curve"] else ([], [])
        ax.plot(xs, ys, label=r["variant"], marker=".")
    ax.set_xlabel("step"), ax.set_ylabel("training loss"), ax.set_title("Training loss")
    legend_outside(ax, title="variant")
    fig.tight_layout()
    return fig


def drift_figure(records: list[dict], num_layers: int):
    """Final per-layer relative weight change of every variant over the decoder layers (legend outside)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    for r in records:
        xs = list(range(num_layers))
        ax.plot(xs, [r["drift"].get(str(i), 0.0) for i in xs], label=r["variant"], marker="o", ms=3)
    (
        ax.set_xlabel("decoder layer"),
        ax.set_ylabel("||W_t - W_0|| / ||W_0||"),
        ax.set_title("Per-layer drift at the end of training"),
    )
    legend_outside(ax, title="variant")
    fig.tight_layout()
    return fig


def plots(records: list[dict], out: Path, num_layers: int) -> dict[str, str]:
    """Training-loss curves and final per-layer drift of every variant; paths relative to ``out``."""
    plt = pyplot()
    paths = {}
    fig = loss_figure(records)
    storage.save_figure(fig, out / LOSS_PNG, dpi=110), plt.close(fig)
    paths["loss"] = LOSS_PNG
    fig = drift_figure(records, num_layers)
    storage.save_figure(fig, out / DRIFT_PNG, dpi=110), plt.close(fig)
    paths["drift"] = DRIFT_PNG
    return paths


def _err(mean: float, ci: Optional[list]) -> Optional[list[list[float]]]:
    return None if not ci else [[mean - ci[0]], [ci[1] - mean]]


def _metric(e: dict, m: Metric) -> Optional[dict]:
    """``(own interval, vs uniform)`` of metric ``m`` in a variant entry."""
    where = e if m.group is None else (e.get(m.group) or {})
    return where.get(m.name), where.get(m.vs_uniform)


def sweep_plots(entries: list[dict], base: dict, out: Path) -> dict[str, str]:
    """The paper's two claims as figures: held-out answer loss per variant (mean, 95% interval when
    there are 3 seeds, every seed, the base as a line); task gain against forgetting (KL on general text)
    for every variant and learning rate; and the paired differences to uniform with their intervals."""
    plt = pyplot()
    paths = {}
    fig = heldout_figure(entries, base)
    storage.save_figure(fig, out / HELDOUT_PNG, dpi=110), plt.close(fig)
    paths["heldout"] = HELDOUT_PNG
    if all(e.get("forgetting") for e in entries):
        fig = tradeoff_figure(entries)
        storage.save_figure(fig, out / TRADEOFF_PNG, dpi=110), plt.close(fig)
        paths["tradeoff"] = TRADEOFF_PNG
    panels = [m for m in METRICS if any(_metric(e, m)[1] and not _metric(e, m)[1].get("reference") for e in entries)]
    if panels:
        fig = paired_figure(entries, panels)
        storage.save_figure(fig, out / PAIRED_PNG, dpi=110), plt.close(fig)
        paths["paired"] = PAIRED_PNG
    return paths


def heldout_figure(entries: list[dict], base: dict):
    """Held-out answer loss per variant: the mean, its interval (3+ seeds), every seed, the base as a line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    for i, e in enumerate(entries):
        h = e["heldout_loss"]
        ax.errorbar(
            [i],
            [h["mean"]],
            yerr=_err(h["mean"], h["ci95"]),
            fmt="o",
            capsize=4,
            color="C0",
            label="mean" + (" and 95% interval" if e["seeds"] >= MIN_SEEDS else "") if i == 0 else None,
        )
        ax.scatter(
            [i] * len(h["per_seed"]), h["per_seed"], s=10, color="C1", zorder=3, label="seeds" if i == 0 else None
        )
    ax.axhline(base["heldout_loss"], color="grey", ls="--", label="base (no tuning)")
    ax.set_xticks(range(len(entries)), [f"{e['mask']}\nlr {e['best_lr']:g}" for e in entries])
    ax.set_xlabel("variant at its chosen learning rate"), ax.set_ylabel("held-out answer loss")
    ax.set_title(
        "Held-out answer loss: mean"
        + (" and 95% interval" if entries[0]["seeds"] >= MIN_SEEDS else "")
        + " (dots: seeds)"
    )
    legend_outside(ax)
    fig.tight_layout()
    return fig


def tradeoff_figure(entries: list[dict]):
    """Task gain against forgetting (KL on general text) for every variant and rate, the chosen rate circled."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for i, e in enumerate(entries):
        pts = [(b["kl"], b["task_gain"], b["lr"]) for b in e["by_lr"] if b["kl"] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{i}", label=e["mask"])
        for kl, gain, lr in pts:
            ax.annotate(f"{lr:g}", (kl, gain), fontsize=7, xytext=(3, 3), textcoords="offset points")
            if lr == e["best_lr"]:
                ax.scatter([kl], [gain], s=90, facecolors="none", edgecolors=f"C{i}")
    ax.set_xlabel("forgetting: mean KL(base || tuned) on general text")
    ax.set_ylabel("task gain: base - tuned held-out loss")
    ax.set_title("Task gain against forgetting, every rate (mean over seeds; circled: chosen rate)", fontsize=9)
    legend_outside(ax, title="variant")
    fig.tight_layout()
    return fig


def paired_figure(entries: list[dict], panels: list[Metric]):
    """Paired differences to uniform of every metric in ``panels`` with their intervals (no legend: the
    title says what the colours mean)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, m in zip(axes[0], panels):
        shown = [e for e in entries if _metric(e, m)[1] and not _metric(e, m)[1].get("reference")]
        for i, e in enumerate(shown):
            d = _metric(e, m)[1]
            ax.errorbar(
                [i],
                [d["mean_diff"]],
                yerr=_err(d["mean_diff"], d["ci95"]),
                fmt="o",
                capsize=4,
                color="C3" if d.get("significant") else "C0",
            )
            ax.scatter([i] * len(d.get("per_seed") or []), d.get("per_seed") or [], s=10, color="C1", zorder=3)
        ax.axhline(0.0, color="grey", ls="--")
        ax.set_xticks(range(len(shown)), [e["mask"] for e in shown])
        ax.set_title(f"{m.label}\nminus uniform's", fontsize=9)
    fig.suptitle("Paired differences to uniform (95% intervals; red: Holm-significant; dots: seeds)", fontsize=9)
    fig.tight_layout()
    return fig


def _fmt_acc(g: Optional[dict], filt: str) -> str:
    if not g or filt not in g or g[filt].get("exact_match") is None:
        return "not run"
    a, se = g[filt]["exact_match"], g[filt].get("stderr")
    return f"{a:.3f} ± {se:.3f}" if se is not None and math.isfinite(se) else f"{a:.3f}"


def _ci(d: dict, key: str = "mean", digits: int = 4) -> str:
    """``mean [lo, hi]``, or the mean alone when there is no interval (fewer than 3 seeds)."""
    if d.get("ci95") is None:
        return f"{d[key]:.{digits}f}"
    lo, hi = d["ci95"]
    return f"{d[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _p(d: Optional[dict], key: str) -> str:
    v = (d or {}).get(key)
    return "–" if v is None else (f"{v:.3g}" if v >= 1e-3 else f"{v:.1e}")


def _verdict(d: Optional[dict], lower: str, higher: str) -> str:
    """Words from ``significant`` alone (Holm-corrected); never from an interval."""
    if d is None:
        return "–"
    if d.get("reference"):
        return "(reference)"
    if d.get("p_value") is None:
        return f"no test (needs {MIN_SEEDS} seeds)" if d.get("ci95") is None else "–"
    if not d.get("significant"):
        return "not significant"
    return lower if d["mean_diff"] < 0 else higher


def _filters(entries: list[dict], base: dict) -> list[str]:
    found: list[str] = []
    for g in [e.get("gsm8k") or {} for e in entries] + [base.get("eval") or {}]:
        found += [f for f, x in g.items() if isinstance(x, dict) and f not in found]
    return found or ["strict-match", "flexible-extract"]


def _findings(entries: list[dict], seeds: int) -> list[str]:
    """Plain sentences: which differences are significant after Holm's correction and which are not."""
    lines = []
    uni = next((e for e in entries if e["mask"] == UNIFORM), None)
    if seeds < MIN_SEEDS:
        lines.append(
            f"- With {seeds} seed{'s' if seeds > 1 else ''} no interval and no p-value is computed: intervals "
            f"need at least {MIN_SEEDS} seeds, because the seed-to-seed variation (initialisation, dropout, data "
            "order) cannot be estimated from fewer. Run `midblock sweep` (5 seeds by default) before drawing "
            "conclusions; the numbers below are single measurements."
        )
    for e in entries:
        vb = e["vs_base"]
        lines.append(
            f"- `{e['mask']}` vs the untrained base: held-out loss {_ci(vb, 'mean_diff')}: "
            + _verdict(vb, "significantly lower (tuning helped)", "significantly higher (tuning hurt)")
            + "."
        )
    if uni is None:
        lines.append(f"- No uniform variant (`{UNIFORM}`) was trained, so nothing is compared with uniform LoRA.")
    for e in entries:
        if uni is None or e is uni:
            continue
        for m in METRICS:
            d = _metric(e, m)[1]
            if d is None:
                continue
            lines.append(
                f"  - `{e['mask']}` vs uniform, {m.label}: {_ci(d, 'mean_diff', m.digits)} (p {_p(d, 'p_value')}, "
                f"Holm {_p(d, 'p_holm')}): "
                + _verdict(d, "significantly lower than uniform's", "significantly higher than uniform's")
                + "."
            )
        at = (e.get("forgetting") or {}).get("kl_at_uniform_gain")
        if at and at.get("vs_uniform", {}).get("mean") is not None:
            lines.append(
                f"  - `{e['mask']}` KL at uniform's task gain minus uniform's KL: {at['vs_uniform']['mean']:+.5f}; "
                + ("lower in every seed" if at["lower_in_every_seed"] else "not lower in every seed")
                + "."
            )
    return lines


def _md(text: str) -> str:
    """``text`` inside a markdown table cell (``|`` escaped)."""
    return text.replace("|", "\\|")


def _cell(x: Optional[float], digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _lr_table(entries: list[dict]) -> list[str]:
    lines = [
        "| variant | lr | validation answer loss | held-out answer loss | task gain | KL(base \\|\\| tuned) | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        for b in e["by_lr"]:
            lines.append(
                f"| `{e['mask']}` | {b['lr']:g} | {_cell(b['validation_loss'])} | {_cell(b['heldout_loss'])} | "
                f"{_cell(b['task_gain'])} | {_cell(b['kl'], 5)} | {'yes' if b['lr'] == e['best_lr'] else ''} |"
            )
    return lines


def write_report(
    opts: JobOptions,
    source: str,
    base: dict,
    entries: list[dict],
    plan: "MidBlockPlan",
    analysis: Optional[dict],
    out: Path,
    title: str,
    no_figures: Optional[str] = None,
    extra: Optional[dict] = None,
) -> Path:
    """Write the figures, ``report.md`` and ``results.json`` into ``out``; return the report's path.

    ``entries``: the per-variant summaries of :func:`~.summary.summarise`; ``plan`` is the plan of one
    trained variant (the model's architecture and depth). ``no_figures``: why figures cannot be
    drawn (matplotlib missing); the report says it instead. ``extra``: top-level fields of
    ``results.json`` (``lrs``, ``validation_rows``, ``heldout_rows``, ...)."""
    from midblock_plugin.experiments import stats
    from midblock_plugin.experiments.recipe import describe

    extra = dict(extra or {})
    num_layers = plan.num_layers
    figs: dict[str, str] = {}
    if no_figures is None:
        try:
            figs = plots(entries, out, num_layers)
            figs.update(sweep_plots(entries, base, out))
        except ImportError as exc:  # found at start, yet it does not import: say so, keep the results
            no_figures = (
                f"Figures were skipped: matplotlib could not be imported ({exc}). Reinstall it "
                f"({install_hint('matplotlib')}) to get the loss, drift and analysis plots."
            )
    skipped = "Figure skipped (see the note under Setup)."
    seeds = entries[0]["seeds"]
    lrs = extra.get("lrs") or sorted({e["best_lr"] for e in entries})
    filters = _filters(entries, base)
    g0 = entries[0].get("gsm8k") or {}
    n = (g0.get(filters[0]) or {}).get("n")
    try:
        protocol = opts.eval_settings().protocol_info() if not opts.skip_eval else None
    except AttributeError:  # an EvalSettings without protocols
        protocol = None
    limit = ("limit " + str(opts.eval_limit)) if opts.eval_limit else "full test set"
    if opts.skip_eval:
        eval_line = "- GSM8K evaluation: not run (--skip-eval); "
    elif (opts.eval_protocol or "lm-eval") == "paper":
        eval_line = (
            f"- GSM8K, the paper's protocol (lm-eval's gsm8k task, zero-shot, greedy, 64 new tokens, last number = "
            f"`flexible-extract`): {limit}; "
        )
    elif opts.eval_protocol == "authors":
        eval_line = (
            f"- GSM8K, the authors' protocol (their scripts: questions shuffled with seed 42, greedy, 64 new "
            f"tokens, no stop sequence, last number as a float): {limit}; "
        )
    else:
        eval_line = (
            f"- GSM8K via lm-eval's own task: {limit}, {_shots(opts, base, entries)}, greedy, up to "
            f"{opts.max_gen_toks} new tokens; "
        )
    gt = base.get("general_text")
    lr_line = (
        f"lr {lrs[0]:g}"
        if len(lrs) == 1
        else f"learning rates {', '.join(f'{x:g}' for x in lrs)} (every variant x seed at each; each variant reported "
        f"at the rate with its lowest mean validation answer loss on {extra.get('validation_rows')} GSM8K "
        "training rows that no variant trains on: the last rows of the (shuffled) training file)"
    )
    lines = [
        f"# {title}",
        "",
        "Every number below was measured in this run; nothing is carried over from the paper.",
        "",
        "## Setup",
        "",
        f"- model: `{opts.model}` ({plan.architecture}, L={num_layers}); data: {source}",
        f"- {describe(opts.recipe or 'default', num_layers)}",
        f"- preset `{opts.preset}`: {opts.num_examples} training examples"
        + (f" (shuffled with seed {opts.shuffle_seed})" if opts.shuffle_seed is not None else " (file order)")
        + f", max steps {opts.max_steps}, batch {opts.batch_size} x grad-accum {opts.grad_accum}, "
        f"{opts.max_length} tokens, seed {opts.seed}, bf16 {bool(opts.bf16)}",
        f"- {lr_line}",
        f"- seeds per variant: {seeds} ({', '.join(map(str, entries[0]['seed_values']))}); a seed sets LoRA's initialisation, "
        "dropout and the data order, which is the same for every variant of that seed",
        f"- LoRA on attention projections; uniform baseline rank r={opts.rank}, matched budget (rank floor(r*L/n)), "
        f"alpha policy `{opts.alpha_policy}`"
        + (f", alpha {opts.lora_alpha:g}" if opts.lora_alpha else "")
        + f", dropout {opts.lora_dropout}"
        + (f"; `recommended` = the layers recommended in `{opts.window_from}`" if opts.window_from else ""),
        eval_line + f"held-out loss = mean token loss of the gold answers of the last {opts.heldout} GSM8K test rows "
        "(they measure, never choose)",
        (
            f"- forgetting: base vs tuned on {gt['blocks']} blocks of {gt['block_tokens']} tokens of {gt['source']}: "
            "the change in mean token loss, and the mean KL(base || tuned) of the next-token distributions"
            if gt
            else "- forgetting: not measured (--skip-forgetting)"
        ),
        (
            f"- 95% intervals and p-values: {stats.PAIRED_METHOD}; every family of comparisons with uniform (one per "
            "measure) is Holm-corrected, and significant = Holm-adjusted p < 0.05"
            if seeds >= MIN_SEEDS
            else f"- intervals: none. With {seeds} seed{'s' if seeds > 1 else ''}, intervals need at least {MIN_SEEDS} seeds "
            "(the seed-to-seed variance cannot be estimated from fewer); run `midblock sweep` (5 seeds by default)"
        ),
        "",
        *([f"**Note.** {no_figures}", ""] if no_figures else []),
        "## Results",
        "",
        f"| variant | layers | rank | trainable params | lr | {' | '.join('GSM8K ' + f for f in filters)} | n | "
        "held-out answer loss" + (" [95% CI]" if seeds >= MIN_SEEDS else "") + " | step time (s) | peak memory (GB) |",
        "|---" * (8 + len(filters)) + "|",
        f"| {base['variant']} | – | – | 0 | – | {' | '.join(_fmt_acc(_base_gsm(base), f) for f in filters)} | "
        f"{(base.get('eval') or {}).get('n_samples', '–')} | {base['heldout_loss']:.4f} | – | – |",
    ]
    for e in entries:
        g = e.get("gsm8k")
        lines.append(
            f"| `{e['mask']}` | {e['window']} | {e['rank']} | {e['trainable_params']:,} | {e['best_lr']:g} | "
            f"{' | '.join(_fmt_acc(g, f) for f in filters)} | {((g or {}).get(filters[0]) or {}).get('n') or '–'} | "
            f"{_ci(e['heldout_loss'])} | {e['step_time_s']:.3f} | {e['peak_memory_bytes'] / 1024**3:.2f} |"
        )
    accs = [((e.get("gsm8k") or {}).get(f) or {}).get("exact_match") for e in entries for f in filters]
    accs += [((_base_gsm(base) or {}).get(f) or {}).get("exact_match") for f in filters]
    lines += [""]
    if not opts.skip_eval:
        lines.append(
            f"Accuracy is exact match ± its standard error over n={n} questions"
            + (
                f", pooled over {seeds} seeds (the crossed seeds x questions error, which does not shrink below "
                "the one-seed error for the same questions)"
                if seeds > 1
                else ""
            )
            + ". "
        )
        if all(a == 0 for a in accs if a is not None):
            lines.append(
                f"Every model scored 0 on GSM8K here (n={n}): at this size and budget accuracy does not separate "
                "variants, and the held-out answer loss is the measure that does. "
            )
    lines += [
        "Step time is the median training step; "
        f"peak memory is {entries[0]['peak_memory_kind'].replace('_', ' ')} during training.",
        "",
    ]
    if len(lrs) > 1:
        lines += [
            "## Learning rates",
            "",
            "Means over seeds per rate. The chosen rate is picked by the validation answer loss alone; the held-out "
            "test rows only measure.",
            "",
            *_lr_table(entries),
            "",
        ]
    lines += [
        "## Against uniform and against the base",
        "",
        "Paired differences at each variant's chosen rate, on the same rows and seeds (negative = lower than the "
        "reference). p: two-sided; Holm: adjusted over the variants' comparisons of that measure.",
        "",
        "| variant | measure | minus uniform"
        + (" [95% CI]" if seeds >= MIN_SEEDS else "")
        + " | p | Holm p | vs uniform |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        for m in METRICS:
            d = _metric(e, m)[1]
            if d is None:
                continue
            lines.append(
                f"| `{e['mask']}` | {_md(m.label)} | {_ci(d, 'mean_diff', m.digits)} | {_p(d, 'p_value')} | "
                f"{_p(d, 'p_holm')} | {_verdict(d, 'lower', 'higher')} |"
            )
    lines += [
        "",
        "| variant | held-out loss - base" + (" [95% CI]" if seeds >= MIN_SEEDS else "") + " | Holm p | vs base |",
        "|---|---|---|---|",
    ]
    for e in entries:
        vb = e["vs_base"]
        lines.append(
            f"| `{e['mask']}` | {_ci(vb, 'mean_diff')} | {_p(vb, 'p_holm')} | {_verdict(vb, 'lower', 'higher')} |"
        )
    lines += ["", "## Forgetting", ""]
    if gt:
        forget = [m for m in METRICS if m.group == "forgetting"]
        lines += [
            f"General text: {gt['source']}; the base model's mean token loss on it is {gt['loss']:.4f}. "
            "Change in loss = tuned minus base (> 0: worse on general text); KL = mean over tokens of "
            "KL(base || tuned) of the next-token distributions (0 = unchanged).",
            "",
            "| variant | " + " | ".join(_md(m.label) for m in forget) + " | KL at uniform's task gain |",
            "|---" * (len(forget) + 2) + "|",
        ]
        for e in entries:
            f = e.get("forgetting") or {}
            at = f.get("kl_at_uniform_gain")
            at_cell = "–" if not at or at.get("mean") is None else _ci(at, digits=5)
            lines.append(
                f"| `{e['mask']}` | "
                + " | ".join(_ci(f[m.name], digits=m.digits) if f.get(m.name) else "–" for m in forget)
                + f" | {at_cell} |"
            )
        note = next(
            ((e.get("forgetting") or {}).get("kl_at_uniform_gain_note") for e in entries if e.get("forgetting")), None
        )
        if note:
            lines += ["", f"KL at uniform's task gain: {note.rstrip('.')}."]
    else:
        lines.append("Not measured (--skip-forgetting).")
    if not opts.skip_eval and any(e.get("gsm8k") for e in entries):
        lines += [
            "",
            "## GSM8K against uniform",
            "",
            "Paired per question (the same questions for every variant and seed).",
            "",
            "| variant | filter | accuracy - uniform's | p | Holm p | vs uniform |",
            "|---|---|---|---|---|---|",
        ]
        for e in entries:
            for f in filters:
                d = ((e.get("gsm8k") or {}).get(f) or {}).get("vs_uniform")
                if d is not None:
                    lines.append(
                        f"| `{e['mask']}` | {f} | {_ci(d, 'mean_diff', 3)} | {_p(d, 'p_value')} | {_p(d, 'p_holm')} | "
                        f"{_verdict(d, 'lower', 'higher')} |"
                    )
    lines += [
        "",
        "## What is significant",
        "",
        *_findings(entries, seeds),
        "",
        "Significant = the Holm-adjusted p-value of the paired comparison is below 0.05 (each measure's comparisons "
        "with uniform are one family). This is one model, one data set and one budget; it says nothing about "
        "other sizes.",
        "",
        "## Figures",
        "",
        f"![held-out loss per variant]({figs['heldout']})" if "heldout" in figs else skipped,
        "",
        f"![task gain against forgetting]({figs['tradeoff']})"
        if "tradeoff" in figs
        else (skipped if no_figures else "No forgetting measure, so no trade-off figure."),
        "",
        f"![paired differences to uniform]({figs['paired']})"
        if "paired" in figs
        else (skipped if no_figures else "No uniform variant, so no paired differences to it."),
        "",
        "## Training loss",
        "",
        f"![loss curves]({figs['loss']})" if "loss" in figs else skipped,
        "",
        ("First seed of each variant at its chosen rate. " if seeds > 1 else "") + "Training loss per step.",
        "",
        "## Per-layer drift",
        "",
        f"![drift]({figs['drift']})" if "drift" in figs else skipped,
        "",
        "Relative weight change of each layer's trained matrices at the end of training (zero outside a variant's window"
        + ("; first seed" if seeds > 1 else "")
        + ").",
        "",
    ]
    if seeds > 1:
        lines += [
            "## Per seed",
            "",
            "At each variant's chosen rate.",
            "",
            "| variant | seed | " + " | ".join(_md(m.label) for m in METRICS) + " |",
            "|---" * (2 + len(METRICS)) + "|",
        ]
        for e in entries:
            for i, s in enumerate(e["seed_values"]):
                cells = []
                for m in METRICS:
                    own = _metric(e, m)[0]
                    cells.append("–" if not own else f"{own['per_seed'][i]:.{m.digits}f}")
                lines.append(f"| `{e['mask']}` | {s} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Layer-wise analysis", ""]
    if analysis:
        rec = analysis["recommendation"]
        png = analysis["paths"].get("png")
        where = (
            "the comparison's own uniform run"
            if analysis.get("reused_comparison_run")
            else "a uniform model trained for the analysis"
        )
        lines += [
            f"Base vs the uniform model `{analysis.get('tuned_variant') or UNIFORM}` ({where}: seed {analysis.get('seed')}, "
            f"lr {analysis.get('lr'):g}) on GSM8K prompts; a window-tuned model is never analysed (its untrained layers "
            "would make the recommendation circular): "
            f"[analysis.json]({os.path.relpath(analysis['paths']['json'], out)}), [analysis.csv]({os.path.relpath(analysis['paths']['csv'], out)}).",
            "",
            f"![analysis]({os.path.relpath(png, out)})" if png else skipped,
            "",
        ]
        if rec.get("refused"):
            lines += [f"No window is recommended: {rec['refused']}", ""]
        else:
            lines += [
                f"Recommended window: {window_words(rec, num_layers)}"  # a mask only when it is exact
                + f" (signal: {rec.get('signal_name') or 'own_output'}); rule: {rec['rule'].rstrip('.')}. "
                f"Test it against the defaults on fresh seeds: `midblock sweep --variants recommended,11111,01110 "
                f"--window-from {os.path.relpath(analysis['paths']['json'], out)}`.",
                "",
            ]
    else:
        lines += ["Skipped (--skip-analysis).", ""]
    io.write_json(
        out / io.RESULTS_JSON,
        {
            "options": asdict(opts),
            "source": source,
            "interval_method": stats.PAIRED_METHOD,
            "multiple_testing": "Holm over the variants' comparisons with uniform, per measure",
            "min_seeds_for_intervals": MIN_SEEDS,
            "eval_protocol": protocol,
            **extra,
            "base": {k: v for k, v in base.items() if k not in ("eval_report", "gsm8k_correct")},
            "variants": entries,
            "analysis": analysis,
            "figures": figs,
            "figures_skipped": no_figures,
        },
    )
    return io.write_text_atomic(out / io.REPORT_MD, "\n".join(lines) + "\n")


def _shots(opts: JobOptions, base: dict, entries: list[dict]) -> str:
    """The few-shot count the evaluations ran with (lm-eval reports it per task), e.g. ``5-shot (the
    task's default)``; the option's value when no evaluation reported one."""
    ran = sorted(
        {
            g.get("num_fewshot")
            for g in [base.get("eval") or {}] + [e.get("gsm8k") or {} for e in entries]
            if g.get("num_fewshot") is not None
        }
    )
    if not ran:
        return "the task's default number of shots" if opts.num_fewshot is None else f"{opts.num_fewshot}-shot"
    shots = " / ".join(f"{n}-shot" for n in ran)
    return shots + (" (the task's default)" if opts.num_fewshot is None else "")


def _base_gsm(base: dict) -> Optional[dict]:
    """The base model's GSM8K score in the shape of a summary's ``gsm8k``."""
    ev = base.get("eval")
    if not ev:
        return None
    return {
        f: {"exact_match": v["exact_match"], "stderr": v.get("stderr"), "n": ev.get("n_samples")}
        for f, v in ev.items()
        if isinstance(v, dict) and "exact_match" in v
    }
