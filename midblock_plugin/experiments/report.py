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


def _fmt_acc(ev: Optional[dict], filt: str) -> str:
    if not ev or filt not in ev or ev[filt]["exact_match"] is None:
        return "not run"
    se = ev[filt]["stderr"]
    return f"{ev[filt]['exact_match']:.3f} ± {se:.3f}" if se is not None and math.isfinite(se) else f"{ev[filt]['exact_match']:.3f}"


def write_report(opts: JobOptions, source: str, base: dict, records: list[dict], plan: "MidBlockPlan",
                 analysis: Optional[dict], out: Path, title: str, no_figures: Optional[str] = None) -> Path:
    """Write the figures, ``report.md`` and ``results.json`` into ``out``; return the report's path.

    ``plan`` is the plan of one trained variant (the model's architecture and depth).
    ``no_figures``: why figures cannot be drawn (matplotlib missing); the report says it instead."""
    num_layers = plan.num_layers
    figs: dict[str, str] = {}
    if no_figures is None:
        try:
            figs = plots(records, out, num_layers)
        except ImportError as exc:  # found at start, yet it does not import: say so, keep the results
            no_figures = (f"Figures were skipped: matplotlib could not be imported ({exc}). Reinstall it with "
                          '`pip install "midblock-plugin[analysis]"` to get the loss, drift and analysis plots.')
    skipped = "Figure skipped (see the note under Setup)."
    n = (records[0].get("eval") or {}).get("n_samples")
    lines = [
        f"# {title}", "",
        "Every number below was measured in this run; nothing is carried over from the paper.", "",
        "## Setup", "",
        f"- model: `{opts.model}` ({plan.architecture}, L={num_layers}); data: {source}",
        f"- preset `{opts.preset}`: {opts.num_examples} training examples, max steps {opts.max_steps}, batch {opts.batch_size} x grad-accum {opts.grad_accum}, "
        f"lr {opts.lr}, {opts.max_length} tokens, seed {opts.seed}, bf16 {bool(opts.bf16)}",
        f"- LoRA on attention projections; uniform baseline rank r={opts.rank}, matched budget (rank floor(r*L/n)), alpha policy `{opts.alpha_policy}`",
        ("- GSM8K evaluation: not run (--skip-eval); " if opts.skip_eval else
         f"- GSM8K via lm-eval's own task: {('limit ' + str(opts.eval_limit)) if opts.eval_limit else 'full test set'}, "
         f"{'task default' if opts.num_fewshot is None else opts.num_fewshot}-shot, greedy, {opts.max_gen_toks} new tokens; ")
        + f"held-out loss = mean token loss of the gold answers of the last {opts.heldout} GSM8K test rows", "",
        *([f"**Note.** {no_figures}", ""] if no_figures else []),
        "## Results", "",
        "| variant | layers | rank | trainable params | GSM8K strict | GSM8K flexible | n | held-out answer loss | step time (s) | peak memory (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {base['variant']} | – | – | 0 | {_fmt_acc(base.get('eval'), 'strict-match')} | {_fmt_acc(base.get('eval'), 'flexible-extract')} | "
        f"{(base.get('eval') or {}).get('n_samples', '–')} | {base['heldout_loss']:.4f} | – | – |",
    ]
    for r in records:
        ev = r.get("eval")
        lines.append(
            f"| `{r['variant']}` | {r['window']} | {r['rank']} | {r['trainable_params']:,} | {_fmt_acc(ev, 'strict-match')} | "
            f"{_fmt_acc(ev, 'flexible-extract')} | {(ev or {}).get('n_samples', '–')} | {r['heldout_loss']:.4f} | "
            f"{r['step_time_s']:.3f} | {r['peak_memory_bytes'] / 1024**3:.2f} |"
        )
    lines += [
        "",
        ("" if opts.skip_eval else
         f"Accuracy is exact match ± its standard error over n={n} questions; with n this small and a model this size, "
         "differences in accuracy are not significant unless the intervals separate. ") + "Step time is the median training step; "
        f"peak memory is {records[0]['peak_memory_kind'].replace('_', ' ')} during training.", "",
        "## Training loss", "", f"![loss curves]({figs['loss']})" if "loss" in figs else skipped, "",
        "## Per-layer drift", "", f"![drift]({figs['drift']})" if "drift" in figs else skipped, "",
        "Relative weight change of each layer's trained matrices at the end of training (zero outside a variant's window).", "",
        "## Layer-wise analysis", "",
    ]
    if analysis:
        rec = analysis["recommendation"]
        png = analysis["paths"].get("png")
        lines += [
            f"Base vs tuned (`{analysis.get('variant') or records[0]['variant']}`) on GSM8K prompts: "
            f"[analysis.json]({os.path.relpath(analysis['paths']['json'], out)}), [analysis.csv]({os.path.relpath(analysis['paths']['csv'], out)}).", "",
            f"![analysis]({os.path.relpath(png, out)})" if png else skipped, "",
            f"Recommended window: layers {rec['window']} (mask {rec.get('segments')}); rule: {rec['rule']}", "",
        ]
    else:
        lines += ["Skipped (--skip-analysis).", ""]
    io.write_json(out / io.RESULTS_JSON, {"options": asdict(opts), "source": source,
                                          "base": {k: v for k, v in base.items() if k != "eval_report"},
                                          "variants": records, "analysis": analysis, "figures": figs,
                                          "figures_skipped": no_figures})
    return io.write_text_atomic(out / io.REPORT_MD, "\n".join(lines) + "\n")
