"""``midblock plan``: print what would be trained, without loading any weights."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from midblock_plugin import emit as emitting  # import-cheap (no torch): the --emit choices are its TOOLS
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
    p.add_argument(
        "--emit",
        choices=emitting.tool_names(),
        metavar="TOOL",
        help="print the config fragment that trains this window and rank in another tool, with its own keys: "
        + ", ".join(emitting.tool_names())
        + " (needs MODEL)",
    )
    g = p.add_argument_group("ZeRO-3 memory planner")
    g.add_argument("--zero3", action="store_true", help="print per-GPU model-state memory under DeepSpeed ZeRO-3")
    g.add_argument("--gpus-per-node", type=int, default=8)
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--offload", action="store_true", help="optimizer and parameters offloaded to CPU (zero3_offload)")
    g.add_argument(
        "--micro-batch", type=int, help="also estimate activations per GPU: B sequences per step (with --seq-len)"
    )
    g.add_argument("--seq-len", type=int, help="tokens per sequence for the activation estimate (with --micro-batch)")
    g.add_argument(
        "--gradient-checkpointing", action="store_true", help="activation estimate with gradient checkpointing"
    )
    g.add_argument(
        "--no-truncation",
        action="store_true",
        help="activation estimate: checkpointing without midblock's backward truncation below the window",
    )
    g.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="activation dtype (default bf16)")
    add_config_arguments(p, skip=("truncate_backward", "drift_monitor"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not (args.json or args.emit):
        return _run(args)
    # machine-read output: what libraries print to stdout while they load (DeepSpeed's accelerator
    # notice, imported by transformers) goes to stderr, so stdout is only the JSON / fragment
    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        return _run(args, real_stdout)


def _run(args: argparse.Namespace, stdout=None) -> int:
    stdout = stdout or sys.stdout
    if args.num_layers is not None and args.num_layers < 1:
        raise ValueError(f"--num-layers {args.num_layers}: a model has at least one layer; give an integer >= 1.")
    if not args.model and args.num_layers is None:
        raise ValueError("give a MODEL (directory or hub id) or --num-layers N.")
    for name in ("gpus_per_node", "nodes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be an integer >= 1.")
    if args.emit and not args.model:
        raise ValueError(f"--emit {args.emit} needs a MODEL (directory or hub id): the fragment names its modules.")
    if args.emit and (args.json or args.zero3):
        raise ValueError("--emit prints a config fragment only; drop --json / --zero3 (run them separately).")
    if args.zero3 and not args.model:
        raise ValueError("--zero3 needs a MODEL (directory or hub id) for parameter counts, not only --num-layers.")
    if (args.micro_batch is None) != (args.seq_len is None):
        raise ValueError("--micro-batch and --seq-len go together: the activation estimate needs both.")
    if args.micro_batch is not None and not args.zero3:
        raise ValueError("--micro-batch / --seq-len extend the --zero3 memory planner; add --zero3.")
    if args.micro_batch is None and (args.gradient_checkpointing or args.no_truncation):
        raise ValueError(
            "--gradient-checkpointing / --no-truncation describe the activation estimate: "
            "give --micro-batch B --seq-len S."
        )
    for name in ("micro_batch", "seq_len"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be an integer >= 1.")
    cfg = config_from_args(args)  # validated before anything is loaded
    from midblock_plugin.plan import build_plan

    if args.model:
        from midblock_plugin.checks import check_model_dir

        model_config = check_model_dir(args.model, "MODEL")  # config.json only: a decoder midblock can plan for
        plan = build_plan(model_config, cfg, num_layers=args.num_layers)
    else:
        plan = build_plan(None, cfg, num_layers=args.num_layers)
    if args.emit:
        print(emitting.emit(plan, args.emit), file=stdout)
        return 0
    memory = None
    if args.zero3:
        from midblock_plugin.memory import format_table, zero3_estimates

        memory = zero3_estimates(plan, args.gpus_per_node, args.nodes, offload=args.offload)
    activations = None
    if args.zero3 and args.micro_batch is not None:
        from midblock_plugin.memory import DTYPE_BYTES, activation_estimates

        activations = activation_estimates(
            plan,
            model_config,
            args.micro_batch,
            args.seq_len,
            args.gradient_checkpointing,
            DTYPE_BYTES[args.dtype],
            truncation=not args.no_truncation,
            gpus_per_node=args.gpus_per_node,
            nodes=args.nodes,
            offload=args.offload,
        )
    if args.json:
        out = plan.to_json_dict()
        if memory is not None:
            out["zero3_memory"] = {
                "gpus_per_node": args.gpus_per_node,
                "nodes": args.nodes,
                "offload": args.offload,
                "estimates": [m.to_dict() for m in memory],
            }
            if activations is not None:
                from midblock_plugin.memory import activations_to_json

                out["zero3_memory"]["activations"] = activations_to_json(activations)
        print(json.dumps(out, indent=2), file=stdout)
    else:
        print(plan.summary())
        if memory is not None:
            print()
            print(format_table(memory, args.gpus_per_node, args.nodes, args.offload))
        if activations is not None:
            from midblock_plugin.memory import format_activation_table

            print()
            print(format_activation_table(activations))
    return 0
