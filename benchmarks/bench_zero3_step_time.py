#!/usr/bin/env python
"""Training-step time under DeepSpeed ZeRO-3, 2 processes on CPU (gloo): uniform LoRA vs
mid-block LoRA at the matched rank budget, with gradient checkpointing, with FLOPs.

Launches ``benchmarks/zero3_step_worker.py`` with torchrun. Each rank builds every
variant as its own ZeRO-3 engine (the shipped ``zero3`` config, weights partitioned as
they load) and runs them INTERLEAVED step by step, as ``bench_step_time.py`` does:
uniform LoRA, mid-block LoRA with midblock's BackwardTruncation, and mid-block without it.
Checkpointing is reentrant by default (the mode midblock chooses under ZeRO-3 on DeepSpeed
< 0.19.3; TRL asks for it for PEFT + ZeRO-3, but with transformers 5.24 its request only takes
effect when the user passed checkpointing kwargs); ``--settings`` picks either mode.

Printed: wall time per step (the slower rank), CPU time per step (both ranks together),
FLOPs / aten ops / fresh allocations per step (both ranks, counted once, untimed), paired
ratios with bootstrap CIs, and per decoder layer the ZeRO-3 parameter fetches during the
backward (a layer with none ran no backward).

    python benchmarks/bench_zero3_step_time.py [--rounds 10] [--layers 12 --hidden 256] [--settings reentrant,non-reentrant]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_step_time import RATIO_HEAD, SETTINGS, Counts, Variant, ratio_row, variant_table


HERE = Path(__file__).resolve().parent
WORKER = HERE / "zero3_step_worker.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def merge(ranks: list[dict], name: str) -> Variant:
    """One variant over all ranks: wall = the slower rank's step, CPU and counts = the sum."""
    per = [r[name] for r in ranks]
    v = Variant(name, step=lambda: None)
    v.wall = [max(ts) for ts in zip(*(p["wall"] for p in per))]
    v.cpu = [sum(ts) for ts in zip(*(p["cpu"] for p in per))]
    v.counts = Counts(sum(p["flops"] for p in per), sum(p["ops"] for p in per), sum(p["alloc_bytes"] for p in per))
    return v


def report(data: dict) -> None:
    ranks, a = data["ranks"], data["args"]
    names = list(ranks[0])
    variants = {n: merge(ranks, n) for n in names}
    r0 = ranks[0]
    un = next(r0[n] for n in names if n.endswith("/uniform"))
    mb = next(r0[n] for n in names if n.endswith("/midblock"))
    print(
        f"\nDeepSpeed ZeRO-3, {data['world_size']} processes (gloo, CPU), torch threads {data['threads']} each; "
        f"{data['layers']}-layer hidden-{data['hidden']} Llama, batch {a['batch']} x {a['seq']} per rank; uniform "
        f"r={a['rank']} on all layers ({un['trainable_params']:,} params) vs mid-block layers {mb['window']} r={mb['rank']} "
        f"({mb['trainable_params']:,} params); {a['rounds']} interleaved rounds (+{a['warmup']} warm-up); "
        f"parameters partitioned: {all(r[n]['partitioned'] for r in ranks for n in names)}"
    )
    print("wall = the slower rank; CPU time, FLOPs, ops and allocations = both ranks together\n")
    variant_table(list(variants.values()))
    settings = sorted({n.split("/")[0] for n in names}, key=list(SETTINGS).index)
    print("\nmid-block / uniform (paired per round)")
    print(RATIO_HEAD)
    for s in settings:
        ratio_row(f"checkpointing {s}", variants[f"{s}/midblock"], variants[f"{s}/uniform"])
    ckpt = [s for s in settings if SETTINGS[s][0]]
    if ckpt:
        print("\ntruncation on / off, mid-block (paired per round)")
        print(RATIO_HEAD)
        for s in ckpt:
            ratio_row(f"checkpointing {s}", variants[f"{s}/midblock"], variants[f"{s}/midblock-notrunc"])
    print(
        "\nZeRO-3 parameter fetches during the backward of one step, per decoder layer (rank 0; 0 = no backward work)"
    )
    for n in names:
        f = r0[n]["backward_fetches"]
        idle = [i for i, x in enumerate(f) if x == 0]
        print(f"{n:<32}{' '.join(f'{x:>3}' for x in f)}   layers without backward: {idle or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2, help="micro batch per rank")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--window", default="0.2:0.8")
    ap.add_argument(
        "--settings", default="reentrant", help="checkpointing settings, comma-separated: " + ", ".join(SETTINGS)
    )
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also keep the raw per-step data here")
    args = ap.parse_args()
    for s in args.settings.split(","):
        if s not in SETTINGS:
            ap.error(f"--settings: {s!r} is not one of {sorted(SETTINGS)}")

    from midblock_plugin.testing import save_tiny

    with tempfile.TemporaryDirectory(prefix="midblock-zero3-bench-") as tmp:
        model_dir = save_tiny(
            Path(tmp) / "model",
            "llama",
            num_layers=args.layers,
            hidden=args.hidden,
            seed=0,
            intermediate_size=4 * args.hidden,
        )
        out = Path(args.json) if args.json else Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(args.nproc),
            "--master_port",
            str(free_port()),
            str(WORKER),
            "--model",
            str(model_dir),
            "--out",
            str(out),
        ]
        for key in ("settings", "rank", "window", "batch", "seq", "rounds", "warmup", "threads", "seed"):
            cmd += [f"--{key}", str(getattr(args, key))]
        # DeepSpeed JIT-builds a CPU op; keep the build per virtual environment (as tests/conftest.py does)
        env = dict(
            os.environ,
            OMP_NUM_THREADS=str(args.threads),
            TOKENIZERS_PARALLELISM="false",
            HF_HUB_OFFLINE="1",
            PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        )
        env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            print(r.stdout[-6000:], file=sys.stderr)
            raise SystemExit(f"the ZeRO-3 workers failed (exit {r.returncode})")
        report(json.loads(out.read_text()))


if __name__ == "__main__":
    main()
