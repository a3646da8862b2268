"""``midblock plan``: print what would be trained, without loading any weights."""

from __future__ import annotations

import argparse
import json

from midblock_plugin.config import ALPHA_POLICIES, BUDGETS, MODES, TARGET_PRESETS


def add_window_arguments(p: argparse.ArgumentParser) -> None:
    """The window / mode / budget options shared by ``plan`` and the examples."""
    g = p.add_argument_group("window (give at most one; default --window 0.2:0.8)")
    g.add_argument("--window", help="fraction window 'a:b' = layers [floor(a*L), floor(b*L))")
    g.add_argument("--segments", help="segment mask, bottom first, e.g. 01110")
    g.add_argument("--layers", help="explicit layers, e.g. 3-11 or 3,4,9-12 (negative = from the top)")
    g.add_argument("--window-from", help="analysis.json written by 'midblock analyze'")
    g = p.add_argument_group("method")
    g.add_argument("--mode", choices=MODES, default="lora")
    g.add_argument("--rank", type=int, default=16, help="uniform-LoRA rank r the budget is matched to (default 16)")
    g.add_argument("--budget", choices=BUDGETS, default="match")
    g.add_argument("--lora-alpha", type=float, default=None, help="baseline alpha (default 2*rank)")
    g.add_argument("--alpha-policy", choices=ALPHA_POLICIES, default="ratio")
    g.add_argument("--use-rslora", action="store_true")
    g.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (default 0.05, as in the paper)")
    g.add_argument(
        "--target-modules",
        default="attention",
        help=f"one of {', '.join(TARGET_PRESETS)} or a comma-separated list of module names",
    )
    g.add_argument("--train-final-norm", action="store_true", help="full mode: also train the final norm")
    g.add_argument("--train-embeddings", action="store_true", help="full mode: also train the embeddings")


def config_from_args(args: argparse.Namespace):
    from midblock_plugin.config import MidBlockConfig

    tm = args.target_modules
    if "," in tm or tm not in TARGET_PRESETS:
        tm = [t.strip() for t in tm.split(",") if t.strip()]
    return MidBlockConfig(
        window=args.window,
        segments=args.segments,
        layers=args.layers,
        window_from=args.window_from,
        mode=args.mode,
        rank=args.rank,
        budget=args.budget,
        lora_alpha=args.lora_alpha,
        alpha_policy=args.alpha_policy,
        use_rslora=args.use_rslora,
        lora_dropout=args.lora_dropout,
        target_modules=tm,
        train_final_norm=args.train_final_norm,
        train_embeddings=args.train_embeddings,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="show which layers, ranks and parameters would be trained (no weights are loaded)",
        description="Resolve the window against a model config (a Hugging Face model directory or hub id; "
        "built on the meta device, so nothing is downloaded beyond config.json) or a bare layer count.",
    )
    p.add_argument("model", nargs="?", help="model directory (with config.json) or hub id")
    p.add_argument("--num-layers", type=int, help="plan for an L-layer model without any model (no parameter counts)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    g = p.add_argument_group("ZeRO-3 memory planner")
    g.add_argument("--zero3", action="store_true", help="print per-GPU model-state memory under DeepSpeed ZeRO-3")
    g.add_argument("--gpus-per-node", type=int, default=8)
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--offload", action="store_true", help="optimizer and parameters offloaded to CPU (zero3_offload)")
    add_window_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.model and not args.num_layers:
        raise ValueError("give a MODEL (directory or hub id) or --num-layers N.")
    cfg = config_from_args(args)  # validated before anything is loaded
    from midblock_plugin.plan import build_plan

    if args.zero3 and not args.model:
        raise ValueError("--zero3 needs a MODEL (directory or hub id) for parameter counts, not only --num-layers.")
    if args.zero3 and (args.gpus_per_node < 1 or args.nodes < 1):
        raise ValueError(f"--gpus-per-node {args.gpus_per_node} / --nodes {args.nodes}: both must be >= 1.")
    plan = build_plan(args.model, cfg, num_layers=args.num_layers) if args.model else build_plan(None, cfg, num_layers=args.num_layers)
    memory = None
    if args.zero3:
        from midblock_plugin.memory import format_table, zero3_estimates

        memory = zero3_estimates(plan, args.gpus_per_node, args.nodes, offload=args.offload)
    if args.json:
        out = plan.to_json_dict()
        if memory is not None:
            out["zero3_memory"] = {
                "gpus_per_node": args.gpus_per_node, "nodes": args.nodes, "offload": args.offload,
                "estimates": [m.to_dict() for m in memory],
            }
        print(json.dumps(out, indent=2))
    else:
        print(plan.summary())
        if memory is not None:
            print()
            print(format_table(memory, args.gpus_per_node, args.nodes, args.offload))
    return 0
