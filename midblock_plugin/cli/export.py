"""``midblock export``: make a mid-block adapter loadable by vLLM, SGLang, TGI, LoRAX, llama.cpp,
or merge it into the base; every export checks its own logits against the original adapter."""

from __future__ import annotations

import argparse
import json

from midblock_plugin.export import DEFAULT_TOLERANCE, DTYPES, TARGETS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export an adapter for a serving engine (vllm, sglang, tgi, lorax, llama.cpp) or merged; self-checked",
        description="Write ADAPTER_DIR in the form a serving engine loads, then check it: the logits of base + export "
        "(through PEFT; through transformers for 'merged') must equal those of base + the original adapter on a few "
        "prompts (float32). The exit status is 1 if they differ. See docs/serving.md.",
    )
    p.add_argument("adapter", metavar="ADAPTER_DIR", help="a PEFT LoRA adapter directory (adapter_config.json + weights)")
    p.add_argument("--target", required=True, choices=TARGETS,
                   help="tgi/lorax: every layer padded with zeros; vllm: the --max-lora-rank to pass; sglang/llama.cpp: "
                        "rsLoRA folded into alpha; merged: the base with the adapter merged in")
    p.add_argument("--output", required=True, metavar="DIR", help="a new (or empty) directory for the export")
    p.add_argument("--base", help="the base model directory or hub id (default: the adapter's base_model_name_or_path)")
    p.add_argument("--dtype", choices=DTYPES, help="merged only: dtype of the saved model (default float32)")
    p.add_argument("--max-shard-size", default="5GB", help="merged only: largest safetensors shard (default 5GB)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="self-check bound: max |logit difference| <= tolerance * max(1, max |logit|) (default 1e-5)")
    p.add_argument("--device", default="cpu", help="device of the self-check: cpu (default), cuda, cuda:N or auto")
    p.add_argument("--prompt", action="append", dest="prompts", metavar="TEXT",
                   help="a prompt of the self-check (repeatable; default: three built-in prompts)")
    p.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --output")
    p.add_argument("--json", action="store_true", help="print the report as JSON (also written to DIR/midblock-export.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import sys

    from midblock_plugin.export.pipeline import export_adapter
    from midblock_plugin.export.verify import DEFAULT_PROMPTS

    if args.prompts is not None and not all(p.strip() for p in args.prompts):
        raise ValueError("--prompt needs a non-empty text.")
    max_shard = args.max_shard_size
    if args.target != "merged" and max_shard != "5GB":
        raise ValueError("--max-shard-size applies to --target merged only.")
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    # with --json, stdout carries the report only: libraries' own prints (DeepSpeed's logger binds to
    # the stdout of its import) go to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        report = export_adapter(
            args.adapter, args.target, args.output, base=args.base, dtype=args.dtype, max_shard_size=max_shard,
            tolerance=args.tolerance, device=args.device, overwrite=args.overwrite,
            prompts=tuple(args.prompts) if args.prompts else DEFAULT_PROMPTS, log=log,
        )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"wrote {report['output']} ({', '.join(report['files'])})")
        print(f"serve: {report['command']}")
    if not report["passed"]:
        print(f"midblock export: error: the {args.target} export does not reproduce the original adapter's logits "
              f"(see {report['output']}/midblock-export.json); do not serve it.", file=sys.stderr)
        return 1
    return 0
