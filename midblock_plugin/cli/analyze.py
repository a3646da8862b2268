"""``midblock analyze BASE [TUNED]``: the layer-wise analysis subcommand.

``register`` only builds the parser (no torch import); ``run`` does the work.

    midblock analyze ./base ./uniform-11111-adapter --prompts gsm8k --probe --output-dir out/
    midblock plan ./base --window-from out/analysis.json
"""

from __future__ import annotations

import argparse
import sys


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


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``analyze`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "analyze",
        help="layer-wise analysis of a model (and its tuned version); recommends a window",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("base", metavar="BASE", help="base model directory (save_pretrained) or cached hub id")
    p.add_argument(
        "tuned",
        metavar="TUNED",
        nargs="?",
        default=None,
        help="tuned model directory, or a PEFT adapter directory applied to BASE; omit for single-model mode",
    )
    g = p.add_argument_group("prompts")
    g.add_argument(
        "--prompts",
        default="builtin",
        help="'builtin' (40 varied sentences), 'gsm8k', or a JSONL file with 'text' or chat 'messages' rows "
        "(default: builtin)",
    )
    g.add_argument(
        "--data-dir", default=None, help="directory with GSM8K train.jsonl/test.jsonl (default: $MIDBLOCK_GSM8K_DIR)"
    )
    g.add_argument("--split", default="test", choices=("train", "test"), help="GSM8K split (default: test)")
    g.add_argument("--num-prompts", type=int, default=200, help="at most this many prompts (default: 200)")
    g.add_argument(
        "--max-length", type=int, default=128, help="tokens per prompt, longer ones truncated (default: 128)"
    )
    g.add_argument("--tokenizer", default=None, help="tokenizer directory (default: BASE)")
    w = p.add_argument_group("window")
    w.add_argument(
        "--signal",
        default="own_output",
        choices=("own_output", "weight", "inherited_cka"),
        help="two-model per-layer signal the window search reads: own_output = the layer's own output "
        "change on base inputs, weight = its relative weight update, inherited_cka = 1 - CKA of hidden "
        "states (change passed up from below; for comparison) (default: own_output)",
    )
    w.add_argument(
        "--tuned-variant",
        default=None,
        help="what TUNED is, e.g. 11111 (uniform LoRA) or full; detected from the adapter when omitted. "
        "A window-tuned TUNED (a mask with a 0) gets no recommendation",
    )
    w.add_argument(
        "--min-objective",
        type=float,
        default=0.1,
        help="least captured-minus-used share a window must reach, else the paper's 0.2:0.8 (default: 0.1)",
    )
    w.add_argument(
        "--probe",
        action="store_true",
        help="also score each layer of BASE by a few calibration backward passes (gradient probe) and "
        "record the window it picks; with one model it makes the recommendation",
    )
    w.add_argument("--probe-batches", type=int, default=4, help="calibration batches of --probe (default: 4)")
    r = p.add_argument_group("runtime")
    r.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default: 8)")
    r.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="model dtype; auto = checkpoint dtype on GPU, float32 on CPU (default: auto)",
    )
    r.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N (default: auto)")
    r.add_argument(
        "--stats-dtype",
        default="float64",
        choices=("float64", "float32"),
        help="dtype of the D x D accumulators; float32 halves their memory (default: float64)",
    )
    r.add_argument(
        "--no-early-exit",
        action="store_true",
        help="skip early-exit agreement (saves L LM-head passes per batch; on CPU with a large vocabulary "
        "it can double the run time)",
    )
    r.add_argument(
        "--no-weight-stats",
        action="store_true",
        help="skip weight change (two models) / spectral SNR (one model; an SVD per matrix)",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    o = p.add_argument_group("output")
    o.add_argument(
        "--output-dir",
        default="analysis",
        help="directory for analysis.json, analysis.csv, analysis.png (default: ./analysis)",
    )
    o.add_argument("--no-figure", action="store_true", help="do not write analysis.png")
    o.add_argument(
        "--json", action="store_true", help="print the JSON document to stdout instead of the summary table"
    )
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace):
    """Build and validate an :class:`AnalysisConfig` from parsed arguments (no model is loaded)."""
    from midblock_plugin.analysis.run import AnalysisConfig

    return AnalysisConfig(
        base=args.base,
        tuned=args.tuned,
        prompts=args.prompts,
        data_dir=args.data_dir,
        split=args.split,
        num_prompts=args.num_prompts,
        max_length=args.max_length,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        stats_dtype=args.stats_dtype,
        tokenizer=args.tokenizer,
        early_exit=not args.no_early_exit,
        weight_stats=not args.no_weight_stats,
        progress=not args.quiet,
        signal=args.signal,
        tuned_variant=args.tuned_variant,
        min_objective=args.min_objective,
        probe=args.probe,
        probe_batches=args.probe_batches,
    )


def run(args: argparse.Namespace) -> int:
    """Run the analysis, write the reports, print a summary (or the JSON). Returns 0."""
    from midblock_plugin import checks

    checks.check_output_dir(args.output_dir, "--output-dir")
    if not args.no_figure:
        checks.check_dependency("matplotlib", "the figure analysis.png (skip it with --no-figure)")
    config = config_from_args(args)  # BASE / TUNED / prompts / device checked here, before any weights load
    if config.tuned_kind == "adapter":
        checks.check_dependency("peft", "an adapter TUNED")
    from transformers.utils import logging as hf_logging

    from midblock_plugin.analysis.report import summary_table, to_json, write_reports
    from midblock_plugin.analysis.run import run_analysis

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if args.quiet:
        hf_logging.disable_progress_bar()
    try:
        result = run_analysis(config)
    finally:
        if args.quiet and bars_were_on:
            hf_logging.enable_progress_bar()
    doc = result.to_dict()
    paths = write_reports(doc, args.output_dir, figure=not args.no_figure)
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
