#!/usr/bin/env python
"""GSM8K evaluation under DeepSpeed ZeRO-3: 1 process vs 2 processes (CPU, gloo), sharded vs lockstep.

The same tiny random model (same weights everywhere) is evaluated with lm-eval's gsm8k
through :func:`midblock_plugin.evaluation.evaluate_model`:

* ``single``: one process, no DeepSpeed;
* ``sharded``: 2 ranks under torchrun, the model a ZeRO-3 engine (parameters partitioned),
  the ranks splitting the batches in step (``partitioned_mode="sharded"``, the default);
* ``lockstep``: the same 2 ranks, every rank generating every answer (``partitioned_mode="lockstep"``).

Printed per mode: evaluation wall time (the slower rank), rows and ``generate`` calls per
rank (dummy calls included), and whether the generations equal the single process's.
On 2 shared CPU cores and a tiny model the wall times are dominated by ZeRO-3's
per-forward parameter gathering over gloo; the calls per rank are the deterministic part.

    python benchmarks/bench_eval_sharded.py [--limit 16] [--batch-size 4] [--max-gen-toks 32] [--layers 4] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def settings_of(args, mode: str):
    from midblock_plugin.evaluation import EvalSettings

    return EvalSettings(
        limit=args.limit,
        batch_size=args.batch_size,
        max_gen_toks=args.max_gen_toks,
        num_fewshot=args.num_fewshot,
        save_samples=True,
        partitioned_mode=mode if mode != "single" else "sharded",
    )


def model_of(args):
    from midblock_plugin.testing import tiny_model, tiny_tokenizer

    return tiny_model("llama", num_layers=args.layers, hidden=args.hidden, seed=1), tiny_tokenizer()


def run_single(args) -> dict:
    import torch

    from midblock_plugin.evaluation import evaluate_model

    torch.set_num_threads(1)  # as each torchrun rank: same float sums, same greedy choices
    model, tok = model_of(args)
    t0 = time.perf_counter()
    rep = evaluate_model(model, tok, settings_of(args, "single"), print_table=False)
    return summary(rep, time.perf_counter() - t0)


def summary(rep: dict, wall: float) -> dict:
    return {
        "wall_s": round(wall, 3),
        "distributed": rep["distributed"],
        "metrics": rep["results"]["gsm8k"]["metrics"],
        "responses": {str(s["doc_id"]): s["response"] for s in rep["samples"]["gsm8k"]},
    }


def worker(args) -> None:
    """One torchrun rank: a ZeRO-3 engine around the tiny model, evaluated in ``args.worker`` mode."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch.distributed as dist
    from transformers.integrations import HfDeepSpeedConfig

    from midblock_plugin.evaluation import evaluate_model

    dist.init_process_group("gloo")
    cfg = {
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "train_micro_batch_size_per_gpu": 1,
        "zero_allow_untested_optimizer": True,
    }
    model, tok = model_of(args)  # built before the ZeRO-3 config exists: the single process's weights
    keep = HfDeepSpeedConfig(cfg)  # noqa: F841 - transformers sees ZeRO-3 (generate syncs ranks) while it lives
    engine, *_ = deepspeed.initialize(model=model, config=cfg)
    assert sum(p.numel() for p in engine.module.parameters()) == 0, "parameters are not partitioned"
    dist.barrier()
    t0 = time.perf_counter()
    rep = evaluate_model(engine.module, tok, settings_of(args, args.worker), print_table=False, engine=engine)
    wall = time.perf_counter() - t0
    walls: list = [None] * dist.get_world_size()
    dist.all_gather_object(walls, wall)
    if dist.get_rank() == 0:
        out = summary(rep, max(walls))
        out["wall_s_per_rank"] = [round(w, 3) for w in walls]
        Path(args.result).write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


def launch(args, mode: str, result: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        __file__,
        "--worker",
        mode,
        "--result",
        str(result),
    ] + [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in ("limit", "batch_size", "max_gen_toks", "num_fewshot", "layers", "hidden")
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{mode} run failed:\n{proc.stderr[-4000:]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-gen-toks", type=int, default=32)
    p.add_argument("--num-fewshot", type=int, default=1)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--output", help="also write the results as JSON here")
    p.add_argument("--worker", choices=["sharded", "lockstep"], help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    if args.worker:
        worker(args)
        return 0

    results = {"single": run_single(args)}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("sharded", "lockstep"):
            print(f"running {mode} (2 processes, ZeRO-3) ...", file=sys.stderr, flush=True)
            launch(args, mode, Path(tmp) / f"{mode}.json")
            results[mode] = json.loads((Path(tmp) / f"{mode}.json").read_text())
    ref = results["single"]["responses"]
    print(
        f"gsm8k, limit {args.limit}, batch {args.batch_size}, {args.max_gen_toks} new tokens, {args.num_fewshot}-shot; "
        f"tiny llama {args.layers} layers x {args.hidden}"
    )
    head = (
        f"{'mode':<9} {'procs':>5} {'wall s':>8} {'rows/rank':>12} {'generate calls/rank':>20} {'same as 1 proc':>15}"
    )
    print(head)
    print("-" * len(head))
    for mode, r in results.items():
        d = r["distributed"]
        print(
            f"{mode:<9} {d['world_size']:>5} {r['wall_s']:>8.2f} {str(d['rows_per_rank']):>12} "
            f"{str(d['generate_calls_per_rank']):>20} {str(r['responses'] == ref and r['metrics'] == results['single']['metrics']):>15}"
        )
    if args.output:
        from midblock_plugin.io import write_json

        write_json(
            args.output,
            {
                "args": {k: v for k, v in vars(args).items() if k not in ("worker", "result", "output")},
                "results": results,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
