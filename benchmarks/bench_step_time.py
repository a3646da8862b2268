#!/usr/bin/env python
"""Training-step time: uniform LoRA vs mid-block LoRA at the matched rank budget.

12-layer, hidden-256 Llama, batch 4 x 256 tokens, AdamW, CPU by default. Both variants
run side by side in one process, with and without gradient checkpointing; with
checkpointing the Trainer's input-grad hooks are installed exactly as transformers/TRL
do, and mid-block uses midblock's BackwardTruncation (what MidBlockCallback installs).

    python benchmarks/bench_step_time.py [--steps 6] [--rank 16] [--window 0.2:0.8]

Targets (issue 2): mid-block <= 0.85x uniform with checkpointing; never slower without.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm import tqdm


def build(variant: str, rank: int, window: str, checkpointing: bool, reentrant: bool):
    from peft import get_peft_model

    from midblock_plugin import MidBlockConfig
    from midblock_plugin.adapters import lora_config
    from midblock_plugin.plan import build_plan
    from midblock_plugin.testing import tiny_model
    from midblock_plugin.training import BackwardTruncation

    model = tiny_model("llama", num_layers=12, hidden=256, seed=0, intermediate_size=1024)
    if variant == "uniform":
        plan = build_plan(model, MidBlockConfig(rank=rank, layers=f"0-{model.config.num_hidden_layers - 1}"))
    else:
        plan = build_plan(model, MidBlockConfig(rank=rank, window=window))
    model = get_peft_model(model, lora_config(plan, lora_dropout=0.0))
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
        model.enable_input_require_grads()  # as TRL does for PEFT models
        if variant == "midblock":
            BackwardTruncation(plan.layers[0], reentrant=reentrant).install(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, opt, plan


def time_steps(model, opt, steps: int, batch: int, seq: int) -> float:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 500, (batch, seq), generator=g)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--window", default="0.2:0.8")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    settings = [("off", False, False), ("on (non-reentrant)", True, False), ("on (reentrant)", True, True)]
    rows = []
    bar = tqdm(total=len(settings) * 2, desc="benchmark")
    for label, ckpt, reentrant in settings:
        res = {}
        for variant in ("uniform", "midblock"):
            model, opt, plan = build(variant, args.rank, args.window, ckpt, reentrant)
            res[variant] = time_steps(model, opt, args.steps, args.batch, args.seq)
            res[variant + "_plan"] = plan
            bar.update(1)
        rows.append((label, res))
    bar.close()
    mb = rows[0][1]["midblock_plan"]
    un = rows[0][1]["uniform_plan"]
    print(
        f"\n12-layer hidden-256 Llama, batch {args.batch} x {args.seq}, torch threads {torch.get_num_threads()}; "
        f"uniform r={args.rank} on 12 layers ({un.trainable_params:,} params) vs mid-block layers {mb.window} "
        f"r={mb.ranks[mb.layers[0]]} ({mb.trainable_params:,} params); median of {args.steps} steps"
    )
    print(f"{'checkpointing':<22}{'uniform s/step':>16}{'mid-block s/step':>18}{'ratio':>8}")
    for label, res in rows:
        print(f"{label:<22}{res['uniform']:>16.3f}{res['midblock']:>18.3f}{res['midblock'] / res['uniform']:>8.3f}")


if __name__ == "__main__":
    main()
