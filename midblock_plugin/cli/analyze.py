"""``midblock analyze BASE [TUNED]``: the layer-wise analysis subcommand.

``register`` only builds the parser (no torch import); ``run`` does the work.

    midblock analyze ./base ./uniform-11111-adapter --prompts gsm8k --probe --output-dir out/
    midblock plan ./base --window-from out/analysis.json
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from midblock_plugin.cli.fields import add_dataclass_arguments, values_from_args


DESCRIPTION = """\
Layer-wise analysis of a base model (and a tuned model or LoRA adapter): per-layer linear
CKA, cosine similarity, mean shift, effective rank, prompt/dataset entropy, curvature,
relative weight change (attention / MLP) and early-exit agreement; with one model, the
intrinsic metrics plus a Spectrum-style weight SNR. Writes analysis.json / .csv / .png
and a recommended window (a heuristic; see docs/analysis.md) that `plan`, the TRL
integration and the Axolotl plugin accept via --window-from analysis.json.

The window comes from each layer's OWN change (--signal own_output: the tuned layer run on
the base model's input to it) and the best contiguous window over all starts and ends.
TUNED must be tuned on every layer (a uniform 11111 adapter or a full fine-tune): an
adapter that trains only some layers gets its metrics but no recommendation. --probe adds
a cheap pre-training signal (gradients of a few calibration batches on BASE) and its window."""


@dataclass
class AnalyzeOutput:
    """Where ``midblock analyze`` writes (the command's own options, beside :class:`AnalysisConfig`'s)."""

    output_dir: str = field(
        default="analysis",
        metadata={"group": "output", "help": "directory for analysis.json, analysis.csv, analysis.png"},
    )
    figure: bool = field(
        default=True,
        metadata={"group": "output", "flag": "--no-figure", "negate": True, "help": "do not write analysis.png"},
    )
    json: bool = field(
        default=False,
        metadata={"group": "output", "help": "print the JSON document to stdout instead of the summary table"},
    )


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``analyze`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "analyze",
        help="layer-wise analysis of a model (and its tuned version); recommends a window",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from midblock_plugin.analysis.config import AnalysisConfig

    add_dataclass_arguments(p, AnalysisConfig)  # BASE, TUNED and every option: one field each
    add_dataclass_arguments(p, AnalyzeOutput)
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace):
    """Build and validate an :class:`AnalysisConfig` from parsed arguments (no model is loaded)."""
    from midblock_plugin.analysis.config import AnalysisConfig

    return AnalysisConfig(**values_from_args(args, AnalysisConfig))


def run(args: argparse.Namespace) -> int:
    """Run the analysis, write the reports, print a summary (or the JSON). Returns 0."""
    from midblock_plugin import checks

    checks.check_output_dir(args.output_dir, "--output-dir")
    if args.figure:
        checks.check_dependency("matplotlib", "the figure analysis.png (skip it with --no-figure)")
    config = config_from_args(args)  # BASE / TUNED / prompts / device checked here, before any weights load
    if config.tuned_kind == "adapter":
        checks.check_dependency("peft", "an adapter TUNED")
    from transformers.utils import logging as hf_logging

    from midblock_plugin.analysis.report import summary_table, to_json, write_reports
    from midblock_plugin.analysis.run import run_analysis

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not config.progress:
        hf_logging.disable_progress_bar()
    try:
        result = run_analysis(config)
    finally:
        if not config.progress and bars_were_on:
            hf_logging.enable_progress_bar()
    doc = result.to_dict()
    paths = write_reports(doc, args.output_dir, figure=args.figure)
    if args.json:
        print(to_json(doc))
    else:
        print(summary_table(doc))
        print("wrote " + ", ".join(paths.values()))
        if doc["recommendation"]["layers"]:
            print(f"use it: midblock plan {args.base} --window-from {paths['json']}")
    if args.json:
        print("wrote " + ", ".join(paths.values()), file=sys.stderr)
    return 0
