"""The two jobs: :func:`run_job` (one variant end to end) and :func:`compare` (several
windows at one rank budget and seed), each ending in one report."""

from __future__ import annotations

from pathlib import Path

from midblock_plugin.cli.options import DEFAULT_SEGMENTS
from midblock_plugin.data import gsm8k
from midblock_plugin.experiments.options import JobOptions
from midblock_plugin.experiments.report import write_report
from midblock_plugin.experiments.train import analyse, evaluate_base, train_variant


def _prepare(opts: JobOptions, variants: tuple[str, ...], log):
    """Resolve the options, validate every mask and the eval settings before any work,
    load GSM8K and score the base model: ``(opts, out, train rows, held-out rows, source, base)``."""
    opts = opts.resolved()
    out = Path(opts.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for v in variants:
        opts.midblock_config(v)  # every mask is validated before any work
    if not opts.skip_eval:
        opts.eval_settings()
    train_rows, test_rows, source = gsm8k.load(opts.data_dir, log)
    heldout = test_rows[-opts.heldout:]
    base = evaluate_base(opts, out, heldout, log)
    return opts, out, train_rows, heldout, source, base


def run_job(opts: JobOptions, log=print) -> Path:
    """One mid-block variant end to end; returns the report path."""
    opts, out, train_rows, heldout, source, base = _prepare(opts, (opts.segments,), log)
    rec, plan = train_variant(opts, opts.segments, out / f"variant-{opts.segments}", train_rows, heldout, log,
                              base.get("eval_report"))
    analysis = None if opts.skip_analysis else analyse(opts, rec, out / "analysis")
    return write_report(opts, source, base, [rec], plan, analysis, out, title="midblock: mid-block LoRA on GSM8K")


def compare(opts: JobOptions, log=print) -> Path:
    """Several windows at the same rank budget and seed; one report."""
    opts, out, train_rows, heldout, source, base = _prepare(opts, tuple(opts.variants), log)
    records, plans = [], []
    for v in opts.variants:
        log(f"midblock compare: variant {v} ({len(records) + 1}/{len(opts.variants)})")
        rec, plan = train_variant(opts, v, out / f"variant-{v}", train_rows, heldout, log, base.get("eval_report"))
        records.append(rec)
        plans.append(plan)
    mid = next((r for r in records if r["variant"] == (opts.segments or DEFAULT_SEGMENTS)), records[-1])
    analysis = None if opts.skip_analysis else analyse(opts, mid, out / "analysis")
    return write_report(opts, source, base, records, plans[0], analysis, out,
                        title="midblock compare: uniform vs mid-block LoRA at one rank budget")
