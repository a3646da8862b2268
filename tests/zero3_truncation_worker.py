"""One rank of ``tests/test_zero3_truncation.py``: SFTTrainer + MidBlockCallback under
DeepSpeed ZeRO-3 (CPU, gloo) with gradient checkpointing, once with backward truncation
and once without, counting per decoder layer what runs during the backward.

    torchrun --nproc_per_node 2 tests/zero3_truncation_worker.py --model DIR --layers 2-4 --out DIR

Counted per decoder layer, during backward only (``torch._C._current_graph_task_id() != -1``,
the test DeepSpeed itself uses to tell a checkpoint recompute from a forward):

* ``recompute``: forward calls of the layer's attention (the checkpoint replaying it);
* ``grad``: gradients that reached the output of the layer's MLP (a tensor hook);
* ``ds_fetch``: ZeRO-3 parameter fetches for the layer's submodules
  (``PartitionedParameterCoordinator.fetch_sub_module``), and ``ds_gathered`` the
  partitioned elements that were all-gathered for them.

The full gradients of the trained parameters (``deepspeed.utils.safe_get_full_grad``,
right after each ``engine.backward``) and the losses are saved for the comparison.
Writes ``<out>/<tag>.json`` (counts, per rank) and ``<out>/<tag>.grads.pt`` (rank 0).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--layers", required=True, help="the window, e.g. 2-4")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--runs", default="truncated,untruncated")
    args = ap.parse_args()

    import torch
    from accelerate import PartialState
    from accelerate.state import AcceleratorState
    from datasets import Dataset
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator
    from deepspeed.utils import safe_get_full_grad
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from midblock_plugin import MidBlockConfig
    from midblock_plugin.architecture import decoder_layers
    from midblock_plugin.deepspeed_configs import config_path
    from midblock_plugin.integrations.trl import MidBlockCallback, build_plan

    # DeepSpeed on CPU: gloo and accelerate's configured state (offline-recipes.md)
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    state = PartialState(backend="gloo")
    rank = state.process_index

    counts: dict = {}  # filled per run
    module_layer: dict[int, int] = {}  # id(submodule) -> decoder layer index
    grads: list[dict[str, torch.Tensor]] = []
    engine_model: list = []

    def in_backward() -> bool:
        return torch._C._current_graph_task_id() != -1

    original_fetch = PartitionedParameterCoordinator.fetch_sub_module

    def counting_fetch(self, current_submodule, forward):
        layer = module_layer.get(id(current_submodule))
        if layer is not None and in_backward():
            params = list(current_submodule.parameters(recurse=False))
            counts["ds_fetch"][layer] += 1
            counts["ds_gathered"][layer] += sum(
                p.ds_numel for p in params if getattr(p, "ds_status", None) == ZeroParamStatus.NOT_AVAILABLE
            )
        return original_fetch(self, current_submodule, forward)

    original_backward = DeepSpeedEngine.backward

    def capturing_backward(self, loss, *a, **kw):
        out = original_backward(self, loss, *a, **kw)
        step = {}
        for name, p in engine_model[0].named_parameters():
            if p.requires_grad:
                g = safe_get_full_grad(p)  # a collective: every rank calls it, in the same order
                step[name] = g.detach().clone().cpu()
        grads.append(step)
        return out

    PartitionedParameterCoordinator.fetch_sub_module = counting_fetch
    DeepSpeedEngine.backward = capturing_backward

    rows = [
        {"text": f"Question: what is {i} plus {i + 3}?\nAnswer: {i} + {i + 3} = {2 * i + 3}. #### {2 * i + 3}"}
        for i in range(16)
    ]
    results = {}
    for run in [r for r in args.runs.split(",") if r]:
        truncate = run == "truncated"
        counts.clear()
        counts.update({k: defaultdict(int) for k in ("recompute", "grad", "ds_fetch", "ds_gathered")})
        module_layer.clear()
        grads.clear()
        engine_model.clear()
        out_dir = os.path.join(args.out, run)
        sft = SFTConfig(
            output_dir=out_dir,
            max_steps=args.steps,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=1,
            learning_rate=0.5,
            optim="sgd",
            max_length=64,
            gradient_checkpointing=True,
            bf16=False,
            seed=7,
            train_sampling_strategy="sequential",
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            deepspeed=config_path("zero3"),
            accelerator_config={"use_configured_state": True},
        )
        # after the training arguments, so that ZeRO-3 partitions the weights as they load
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(args.model)
        plan = build_plan(
            args.model, MidBlockConfig(layers=args.layers, rank=4, lora_dropout=0.0, truncate_backward=truncate)
        )
        callback = MidBlockCallback(plan=plan, verbose=False)
        trainer = SFTTrainer(
            model=model,
            args=sft,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=plan.lora_config(),
            callbacks=[callback],
        )
        callback.bind(trainer)
        engine_model.append(trainer.model)
        handles = []
        for i, layer in enumerate(decoder_layers(trainer.model)):
            for _, sub in layer.named_modules():
                module_layer[id(sub)] = i

            def recompute_hook(module, inputs, i=i):
                if in_backward():
                    counts["recompute"][i] += 1

            def grad_hook(module, inputs, output, i=i):
                if isinstance(output, torch.Tensor) and output.requires_grad:
                    output.register_hook(lambda g, i=i: counts["grad"].__setitem__(i, counts["grad"][i] + 1))

            handles.append(layer.self_attn.register_forward_pre_hook(recompute_hook))
            handles.append(layer.mlp.register_forward_hook(grad_hook))
        trainer.train()
        for h in handles:
            h.remove()
        trunc = callback.truncation
        from midblock_plugin.compat import model_checkpointing_reentrant

        results[run] = {
            "rank": rank,
            "num_layers": plan.num_layers,
            "window": plan.layers,
            # the mode the layers ran with (TRL's PEFT + ZeRO-3 switch in gradient_checkpointing_kwargs
            # does not reach transformers 5.24 when no kwargs were given)
            "use_reentrant": model_checkpointing_reentrant(trainer.model),
            "truncation_reentrant": trunc.reentrant if trunc is not None else None,
            "partitioned": any(hasattr(p, "ds_id") for p in trainer.model.parameters()),
            "truncation_installed": trunc is not None,
            "removed_input_hooks": trunc.removed_input_hooks if trunc is not None else 0,
            "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
            "steps_with_grads": len(grads),
            **{k: {str(i): v[i] for i in range(plan.num_layers)} for k, v in counts.items()},
        }
        if rank == 0:
            torch.save([dict(g) for g in grads], os.path.join(args.out, f"{run}.grads.pt"))
        del trainer, model
        state.wait_for_everyone()
        # the next run builds its own Accelerator with a DeepSpeed plugin: accelerate allows
        # that only on a fresh state (the process group stays up)
        AcceleratorState._reset_state(reset_partial_state=True)
        state = PartialState(backend="gloo")
    with open(os.path.join(args.out, f"counts.rank{rank}.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
