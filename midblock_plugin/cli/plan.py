"""``midblock plan``: print what would be trained, without loading any weights."""

from __future__ import annotations

import argparse
import json

from midblock_plugin.cli.options import add_config_arguments, config_from_args


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
    add_config_arguments(p, skip=("truncate_backward", "drift_monitor"))
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
