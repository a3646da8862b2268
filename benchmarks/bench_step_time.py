#!/usr/bin/env python
"""Training-step time: uniform LoRA vs mid-block LoRA at the matched rank budget, with FLOPs.

12-layer, hidden-256 Llama, batch 4 x 256 tokens, AdamW, CPU by default. Every variant is
built up front (same weights) and the steps are INTERLEAVED: each round runs one step of
every variant in a fresh random order, so slow phases of a shared machine hit all variants
alike and each round gives a paired ratio. Variants, for each checkpointing setting
(off / non-reentrant / reentrant): uniform LoRA, mid-block LoRA with midblock's
BackwardTruncation (what MidBlockCallback installs) and, with checkpointing, mid-block
without truncation. With checkpointing the input-grad hook is installed as
transformers/TRL do.

Per step the script records wall time and CPU time (``time.process_time``: the time
this process computed, without the time it waited for a core, so it is far less noisy on
a shared machine). Beside the times it prints what one step does, counted once per
variant (untimed, deterministic): FLOPs (``torch.utils.flop_counter.FlopCounterMode``,
forward + backward + checkpoint recompute + optimizer), aten ops dispatched and bytes of
freshly allocated outputs (work FLOPs do not see: dispatch, allocation, autograd
bookkeeping). Ratios are medians of per-round paired ratios with a bootstrap 95% CI and
the IQR. Two settings whose counted ratios agree differ in time only if their time CIs
separate; otherwise the difference is noise.

    python benchmarks/bench_step_time.py [--rounds 30] [--threads 1] [--rank 16] [--window 0.2:0.8]
        [--settings off,non-reentrant,reentrant]

Torch runs one thread by default here (``--threads 0``: torch's default). On 2 shared
cores, 2 threads made the steps 4-5x slower and their relative spread about 6x wider
(each op waits for its slowest thread); the ratios this benchmark is for need no more.

Targets (issue 2): mid-block <= 0.85x uniform with checkpointing; never slower without.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import timeit
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode


# --------------------------------------------------------------------------- counting
class OpCounter(TorchDispatchMode):
    """Aten ops dispatched and bytes of outputs that are fresh allocations (not views, not
    in-place results): the per-step work that a FLOP count does not see."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.alloc_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        returns = func._schema.returns
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for ret, t in zip(returns, outs):
            if isinstance(t, torch.Tensor) and ret.alias_info is None:
                self.alloc_bytes += t.numel() * t.element_size()
        return out


@dataclass
class Counts:
    flops: int = 0
    ops: int = 0
    alloc_bytes: int = 0


def count_step(step: Callable[[], object]) -> Counts:
    """FLOPs, aten ops and allocated bytes of one call of ``step`` (recompute included)."""
    flop = FlopCounterMode(display=False)
    ops = OpCounter()
    with flop, ops:
        step()
    return Counts(flop.get_total_flops(), ops.ops, ops.alloc_bytes)


# --------------------------------------------------------------------------- statistics
def quartiles(xs) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(np.asarray(xs, dtype=float), [25, 50, 75])
    return float(q1), float(q2), float(q3)


def bootstrap_median_ci(xs, n: int = 4000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Median of ``xs`` and a percentile-bootstrap CI of the median (rounds resampled)."""
    xs = np.asarray(xs, dtype=float)
    rng = np.random.default_rng(seed)
    meds = np.median(xs[rng.integers(0, len(xs), size=(n, len(xs)))], axis=1)
    lo, hi = np.percentile(meds, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(np.median(xs)), float(lo), float(hi)


def paired_ratios(a, b) -> np.ndarray:
    """Per-round ratios a[r] / b[r] (the two steps ran in the same round)."""
    return np.asarray(a, dtype=float) / np.asarray(b, dtype=float)


# --------------------------------------------------------------------------- interleaving
@dataclass
class Variant:
    name: str
    step: Callable[[], None]
    wall: list = field(default_factory=list)  # seconds per step, wall clock
    cpu: list = field(default_factory=list)  # seconds per step, CPU time of this process (all its threads)
    counts: Counts | None = None


def interleave(
    variants: list[Variant],
    rounds: int,
    warmup: int,
    seed: int = 0,
    progress: bool = True,
    before_step: Callable[[], None] | None = None,
) -> None:
    """``warmup`` + ``rounds`` rounds; each round times one step of every variant, in a
    random order (seeded: the same on every rank). Only the last ``rounds`` rounds are kept.
    Wall time counts the time this process waited for a core; CPU time
    (``time.process_time``) does not. ``before_step`` runs untimed before each step (e.g. a
    barrier, so that ranks start each step together)."""
    rng = random.Random(seed)
    order = list(range(len(variants)))
    total = warmup + rounds
    for r in range(total):
        rng.shuffle(order)
        for i in order:
            v = variants[i]
            if before_step is not None:
                before_step()
            c0, t0 = time.process_time(), time.perf_counter()
            v.step()
            t1, c1 = time.perf_counter(), time.process_time()
            if r >= warmup:
                v.wall.append(t1 - t0)
                v.cpu.append(c1 - c0)
        if progress:
            print(f"\rround {r + 1}/{total}", end="", flush=True)
    if progress:
        print()


def variant_table(variants: list[Variant]) -> None:
    print(
        "Per variant, per step: wall and CPU time, median [IQR] (s); counted: GFLOP, aten ops, MB of fresh "
        "allocations; CPU ms per GFLOP"
    )
    print(
        f"{'variant':<32}{'wall s':>8}{'IQR':>14}{'CPU s':>8}{'IQR':>14}{'GFLOP':>8}{'ops':>7}{'alloc MB':>9}{'ms/GFLOP':>9}"
    )
    for v in variants:
        wq1, wmed, wq3 = quartiles(v.wall)
        cq1, cmed, cq3 = quartiles(v.cpu)
        c = v.counts
        print(
            f"{v.name:<32}{wmed:>8.3f}{f'{wq1:.3f}-{wq3:.3f}':>14}{cmed:>8.3f}{f'{cq1:.3f}-{cq3:.3f}':>14}"
            f"{c.flops / 1e9:>8.2f}{c.ops:>7}{c.alloc_bytes / 2**20:>9.1f}{1e3 * cmed / (c.flops / 1e9):>9.1f}"
        )


RATIO_HEAD = (
    f"{'':<36}{'wall: median [95% CI]':>23}{'IQR':>13}{'CPU: median [95% CI]':>23}{'IQR':>13}"
    f"{'FLOPs':>7}{'ops':>7}{'alloc':>7}"
)


def ratio_row(label: str, a: Variant, b: Variant) -> tuple[np.ndarray, np.ndarray]:
    """Print the paired per-round ratios a/b (wall and CPU) beside the counted ratios."""
    rw, rc = paired_ratios(a.wall, b.wall), paired_ratios(a.cpu, b.cpu)
    cells = []
    for r in (rw, rc):
        med, lo, hi = bootstrap_median_ci(r)
        q1, _, q3 = quartiles(r)
        cells.append(f"{f'{med:.3f} [{lo:.3f}, {hi:.3f}]':>23}{f'{q1:.3f}-{q3:.3f}':>13}")
    ca, cb = a.counts, b.counts
    print(
        f"{label:<36}{''.join(cells)}{ca.flops / cb.flops:>7.3f}{ca.ops / cb.ops:>7.3f}{ca.alloc_bytes / cb.alloc_bytes:>7.3f}"
    )
    return rw, rc


def ratio_of_ratios_row(label: str, num: tuple, den: tuple, flop_ratio: float) -> None:
    cells = []
    for a, b in zip(num, den):
        r = a / b
        med, lo, hi = bootstrap_median_ci(r)
        q1, _, q3 = quartiles(r)
        cells.append(f"{f'{med:.3f} [{lo:.3f}, {hi:.3f}]':>23}{f'{q1:.3f}-{q3:.3f}':>13}")
    print(f"{label:<36}{''.join(cells)}{flop_ratio:>7.3f}")


# --------------------------------------------------------------------------- this benchmark
#: checkpointing setting -> (checkpointing on, reentrant)
SETTINGS = {"off": (False, False), "non-reentrant": (True, False), "reentrant": (True, True)}
#: variant -> backward truncation on (mid-block without truncation: with checkpointing only)
KINDS = {"uniform": True, "midblock": True, "midblock-notrunc": False}


def build(
    variant: str,
    rank: int,
    window: str,
    checkpointing: bool,
    reentrant: bool,
    truncate: bool,
    layers: int,
    hidden: int,
):
    from peft import get_peft_model

    from midblock_plugin import MidBlockConfig
    from midblock_plugin.plan import build_plan
    from midblock_plugin.testing import tiny_model
    from midblock_plugin.training import BackwardTruncation

    model = tiny_model("llama", num_layers=layers, hidden=hidden, seed=0, intermediate_size=4 * hidden)
    if variant == "uniform":
        plan = build_plan(model, MidBlockConfig(rank=rank, layers=f"0-{layers - 1}", lora_dropout=0.0))
    else:
        plan = build_plan(model, MidBlockConfig(rank=rank, window=window, lora_dropout=0.0))
    model = get_peft_model(model, plan.lora_config())
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
        model.enable_input_require_grads()  # as TRL does for PEFT models
        if variant == "midblock" and truncate:
            if not BackwardTruncation(plan.first_layer, reentrant=reentrant).install(model):
                raise SystemExit(f"truncation does not apply: the window {plan.window} starts at layer 0")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, opt, plan


def make_step(model, opt, ids):
    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def mark_cost(batch: int, seq: int, hidden: int) -> tuple[bool, float]:
    """What the reentrant truncation does once per step at the window's entry:
    ``hidden_states.detach().requires_grad_(True)``. Returns (shares storage, seconds)."""
    x = torch.randn(batch, seq, hidden)
    y = x.detach().requires_grad_(True)
    n = 20000
    sec = min(timeit.repeat(lambda: x.detach().requires_grad_(True), number=n, repeat=5)) / n
    return y.data_ptr() == x.data_ptr(), sec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds kept (one step of every variant each)")
    ap.add_argument("--warmup", type=int, default=2, help="interleaved rounds run first and dropped")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--window", default="0.2:0.8")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument(
        "--settings", default="off,non-reentrant,reentrant", help="checkpointing settings, comma-separated"
    )
    ap.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="variants per setting, comma-separated (uniform and midblock are always run)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the interleaving order")
    ap.add_argument("--json", help="also write the per-step times and the counts here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for s in settings:
        if s not in SETTINGS:
            ap.error(f"--settings: {s!r} is not one of {sorted(SETTINGS)}")
    kinds = {k.strip() for k in args.kinds.split(",") if k.strip()} | {"uniform", "midblock"}
    if kinds - set(KINDS):
        ap.error(f"--kinds: {sorted(kinds - set(KINDS))} not among {list(KINDS)}")

    ids = torch.randint(4, 500, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    variants: dict[tuple[str, str], Variant] = {}
    plans = {}
    for s in settings:
        ckpt, reentrant = SETTINGS[s]
        for kind, truncate in KINDS.items():
            if kind not in kinds or (kind == "midblock-notrunc" and not ckpt):
                continue
            model, opt, plan = build(
                kind.split("-")[0], args.rank, args.window, ckpt, reentrant, truncate, args.layers, args.hidden
            )
            plans[kind.split("-")[0]] = plan
            variants[(s, kind)] = Variant(f"{s}/{kind}", make_step(model, opt, ids))
    for v in variants.values():  # counted once, untimed (FLOPs and ops are deterministic)
        v.counts = count_step(v.step)
    interleave(list(variants.values()), args.rounds, args.warmup, seed=args.seed)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "args": vars(args),
                    "threads": torch.get_num_threads(),
                    "variants": {
                        v.name: {"wall": v.wall, "cpu": v.cpu, **asdict(v.counts)} for v in variants.values()
                    },
                },
                fh,
            )

    un, mb = plans["uniform"], plans["midblock"]
    print(
        f"\n{args.layers}-layer hidden-{args.hidden} Llama, batch {args.batch} x {args.seq}, torch threads "
        f"{torch.get_num_threads()}; uniform r={args.rank} on {args.layers} layers ({un.trainable_params:,} params) vs "
        f"mid-block layers {mb.window} r={mb.ranks[mb.first_layer]} ({mb.trainable_params:,} params); "
        f"{args.rounds} interleaved rounds (+{args.warmup} warm-up), one step of each of {len(variants)} variants per round"
    )
    print()
    variant_table(list(variants.values()))
    print("\nmid-block / uniform (paired per round)")
    print(RATIO_HEAD)
    mu = {s: ratio_row(f"checkpointing {s}", variants[(s, "midblock")], variants[(s, "uniform")]) for s in settings}
    ckpt_settings = [s for s in settings if SETTINGS[s][0]]
    if ckpt_settings and "midblock-notrunc" in kinds:
        print("\ntruncation on / off, mid-block (paired per round)")
        print(RATIO_HEAD)
        for s in ckpt_settings:
            ratio_row(f"checkpointing {s}", variants[(s, "midblock")], variants[(s, "midblock-notrunc")])
    if "reentrant" in settings and "non-reentrant" in settings:
        print("\nreentrant / non-reentrant, same variant (paired per round)")
        print(RATIO_HEAD)
        for kind in [k for k in KINDS if k in kinds]:
            ratio_row(kind, variants[("reentrant", kind)], variants[("non-reentrant", kind)])

        def flops(s, kind):
            return variants[(s, kind)].counts.flops

        fr = (flops("reentrant", "midblock") / flops("reentrant", "uniform")) / (
            flops("non-reentrant", "midblock") / flops("non-reentrant", "uniform")
        )
        ratio_of_ratios_row("(mid/uni reentrant)/(non-reentrant)", mu["reentrant"], mu["non-reentrant"], fr)
        shares, sec = mark_cost(args.batch, args.seq, args.hidden)
        print(
            f"\nreentrant truncation's mark at the window entry, hidden_states.detach().requires_grad_(True): "
            f"shares storage with its input (no copy): {shares}; {sec * 1e6:.1f} us per call, once per step"
        )


if __name__ == "__main__":
    main()
