"""One rank of ``benchmarks/bench_zero3_step_time.py`` (launched by it through torchrun).

Builds every variant as its own DeepSpeed ZeRO-3 engine in this process (the shipped
``zero3`` config with the "auto" values filled as the HF Trainer fills them, gloo on CPU,
weights partitioned as they load), the way SFTTrainer + MidBlockCallback set up a PEFT
model under ZeRO-3: LoRA from ``plan.lora_config()``, checkpointing (reentrant by default: the
mode DeepSpeed < 0.19.3 needs; ``--settings`` picks either), the input-grad hook, and for mid-block midblock's
BackwardTruncation. Then it counts one step of each variant (FLOPs, aten ops, fresh
allocations, and per decoder layer the ZeRO-3 parameter fetches during the backward) and
times interleaved steps (``bench_step_time.interleave``, a barrier before each step).
Rank 0 writes everything to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from collections import defaultdict

import torch


def fill_auto(cfg: dict, batch: int, world: int, hidden: int) -> dict:
    """The shipped config's "auto" values, filled as transformers' HfTrainerDeepSpeedConfig
    fills them for a Trainer with these settings (fp32, max_grad_norm 1.0, no accumulation)."""
    cfg = copy.deepcopy(cfg)
    cfg["train_micro_batch_size_per_gpu"] = batch
    cfg["gradient_accumulation_steps"] = 1
    cfg["train_batch_size"] = batch * world
    cfg["gradient_clipping"] = 1.0
    cfg["bf16"] = {"enabled": False}
    cfg["fp16"] = {"enabled": False}
    zo = cfg["zero_optimization"]
    zo["reduce_bucket_size"] = hidden * hidden
    zo["stage3_prefetch_bucket_size"] = int(0.9 * hidden * hidden)
    zo["stage3_param_persistence_threshold"] = 10 * hidden
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--settings", default="reentrant")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--window", default="0.2:0.8")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import deepspeed
    import torch.distributed as dist
    from bench_step_time import SETTINGS, Variant, count_step, interleave
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    from midblock_plugin import MidBlockConfig
    from midblock_plugin.architecture import decoder_layers
    from midblock_plugin.deepspeed_configs import config_path
    from midblock_plugin.plan import build_plan
    from midblock_plugin.training import BackwardTruncation

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mcfg = AutoConfig.from_pretrained(args.model)
    layers, hidden = mcfg.num_hidden_layers, mcfg.hidden_size
    with open(config_path("zero3"), encoding="utf-8") as fh:
        ds_config = fill_auto(json.load(fh), args.batch, world, hidden)
    keep_alive = HfDeepSpeedConfig(ds_config)  # from_pretrained partitions under zero.Init while it lives

    # ZeRO-3 parameter fetches during the backward, per decoder layer (counted steps only)
    module_layer: dict[int, int] = {}
    fetches: dict[int, int] = defaultdict(int)
    counting = [False]
    original_fetch = PartitionedParameterCoordinator.fetch_sub_module

    def counting_fetch(self, current_submodule, forward):
        layer = module_layer.get(id(current_submodule))
        if counting[0] and layer is not None and torch._C._current_graph_task_id() != -1:
            fetches[layer] += 1
        return original_fetch(self, current_submodule, forward)

    PartitionedParameterCoordinator.fetch_sub_module = counting_fetch

    g = torch.Generator().manual_seed(1000 + rank)
    ids = torch.randint(4, mcfg.vocab_size, (args.batch, args.seq), generator=g)
    variants, info = {}, {}
    for s in [x for x in args.settings.split(",") if x]:
        ckpt, reentrant = SETTINGS[s]
        kinds = [("uniform", True), ("midblock", True)] + ([("midblock-notrunc", False)] if ckpt else [])
        for kind, truncate in kinds:
            base = kind.split("-")[0]
            window = dict(layers=f"0-{layers - 1}") if base == "uniform" else dict(window=args.window)
            plan = build_plan(
                args.model, MidBlockConfig(rank=args.rank, lora_dropout=0.0, truncate_backward=truncate, **window)
            )
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
            model = get_peft_model(model, plan.lora_config())
            model.train()
            if ckpt:
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
                model.enable_input_require_grads()  # as TRL does for PEFT models
                if base == "midblock" and truncate:
                    if not BackwardTruncation(plan.first_layer, reentrant=reentrant).install(model):
                        raise SystemExit(f"truncation does not apply: the window {plan.window} starts at layer 0")
            for i, layer in enumerate(decoder_layers(model)):
                for sub in layer.modules():
                    module_layer[id(sub)] = i
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)

            def step(engine=engine):
                loss = engine(input_ids=ids, labels=ids).loss
                engine.backward(loss)
                engine.step()

            name = f"{s}/{kind}"
            variants[name] = Variant(name, step)
            info[name] = {
                "window": plan.window,
                "trainable_params": plan.trainable_params,
                "rank": plan.ranks[plan.first_layer],
                "partitioned": any(hasattr(p, "ds_id") for p in model.parameters()),
            }

    for name, v in variants.items():  # one untimed, counted step each
        fetches.clear()
        counting[0] = True
        dist.barrier()
        v.counts = count_step(v.step)
        counting[0] = False
        info[name]["backward_fetches"] = [fetches[i] for i in range(layers)]
    interleave(
        list(variants.values()), args.rounds, args.warmup, seed=args.seed, progress=rank == 0, before_step=dist.barrier
    )

    mine = {
        name: {
            "wall": v.wall,
            "cpu": v.cpu,
            "flops": v.counts.flops,
            "ops": v.counts.ops,
            "alloc_bytes": v.counts.alloc_bytes,
            **info[name],
        }
        for name, v in variants.items()
    }
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        out = {
            "world_size": world,
            "layers": layers,
            "hidden": hidden,
            "threads": torch.get_num_threads(),
            "ranks": everyone,
            "args": vars(args),
        }
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(out, fh)
    del keep_alive
    dist.barrier()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
