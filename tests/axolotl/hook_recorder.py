"""A test-only Axolotl plugin, listed after ``MidBlockPlugin``, that appends every hook it
receives (and what the model looks like at that moment) to ``$MIDBLOCK_HOOK_LOG``, with the
process's ``RANK`` (0 for a single process; under torchrun every rank appends to the same file).

With ``$MIDBLOCK_BREAK_JSONL`` set to a JSON Lines file, ``post_train`` (after training, before
the model is saved and evaluated) keeps its first line and appends an unterminated one: data that
went bad after the config was checked, so the final evaluation fails (tests/axolotl/test_eval.py)."""

from __future__ import annotations

import json
import os

from axolotl.integrations.base import BasePlugin


def _record(hook: str, **info) -> None:
    path = os.environ.get("MIDBLOCK_HOOK_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"hook": hook, "rank": int(os.environ.get("RANK", "0")), **info}) + "\n")


def _model_info(model) -> dict:
    lora_layers = set()
    trainable_outside_lora = []
    for name, p in model.named_parameters():
        if "lora_" in name:
            parts = name.split(".")
            for a, b in zip(parts, parts[1:]):
                if a == "layers" and b.isdigit():
                    lora_layers.add(int(b))
        elif p.requires_grad:
            trainable_outside_lora.append(name)
    return {
        "model_class": type(model).__name__,
        "lora_layers": sorted(lora_layers),
        "trainable_non_lora": len(trainable_outside_lora),
    }


def _adapter_match(cfg, model) -> dict:
    """With ``lora_model_dir`` (evaluate, inference, merge --merge_method=legacy): how far the
    model's LoRA weights are from the saved adapter's (``adapter_max_diff``; 0.0 when it was
    loaded) and how many of the saved tensors the model holds (``adapter_tensors``)."""
    adapter = os.path.join(str(cfg.get("lora_model_dir") or ""), "adapter_model.safetensors")
    if not cfg.get("lora_model_dir") or not os.path.exists(adapter):
        return {}
    from safetensors.torch import load_file

    saved = load_file(adapter)
    # PEFT names a loaded tensor "...q_proj.lora_A.default.weight"; the file has "...q_proj.lora_A.weight"
    held = {n.replace(".default.", "."): p for n, p in model.named_parameters() if "lora_" in n}
    common = [k for k in saved if k in held]
    diff = max((float((held[k].detach().float().cpu() - saved[k].float()).abs().max()) for k in common), default=None)
    return {"adapter_tensors": len(common), "saved_tensors": len(saved), "adapter_max_diff": diff}


class HookRecorderPlugin(BasePlugin):
    def register(self, cfg):
        _record("register", adapter=cfg.get("adapter"))

    def get_input_args(self):
        _record("get_input_args")

    def load_adapter(self, model, cfg, inference=False, config_only=False):
        _record("load_adapter")  # must not happen: MidBlockPlugin, listed first, loads it

    def pre_model_load(self, cfg):
        _record("pre_model_load")

    def post_model_build(self, cfg, model):
        _record("post_model_build", **_model_info(model))

    def pre_lora_load(self, cfg, model):
        _record("pre_lora_load", **_model_info(model))

    def post_lora_load(self, cfg, model):
        _record("post_lora_load", **_model_info(model))

    def post_model_load(self, cfg, model):
        _record("post_model_load", **_model_info(model), **_adapter_match(cfg, model))

    def get_trainer_cls(self, cfg):
        _record("get_trainer_cls")

    def add_callbacks_pre_trainer(self, cfg, model):
        _record("add_callbacks_pre_trainer")
        return []

    def add_callbacks_post_trainer(self, cfg, trainer):
        names = [type(cb).__name__ for cb in trainer.callback_handler.callbacks]
        _record("add_callbacks_post_trainer", callbacks=names)
        return []

    def post_trainer_create(self, cfg, trainer):
        self.trainer = trainer
        _record("post_trainer_create", callbacks=[type(cb).__name__ for cb in trainer.callback_handler.callbacks])

    def create_optimizer(self, cfg, trainer):
        _record("create_optimizer")

    def create_lr_scheduler(self, cfg, trainer, optimizer, num_training_steps):
        n = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
        _record("create_lr_scheduler", optimizer_params=n)

    def post_train(self, cfg, model):
        broken = os.environ.get("MIDBLOCK_BREAK_JSONL")
        if broken:
            with open(broken, encoding="utf-8") as fh:
                first = fh.readline()
            with open(broken, "w", encoding="utf-8") as fh:
                fh.write(first + '{"question": "unterminated\n')
        plan = os.path.join(cfg.output_dir, "midblock", "plan.json")
        ours = [cb for cb in self.trainer.callback_handler.callbacks if type(cb).__name__ == "MidBlockCallback"]
        truncation = getattr(ours[0], "truncation", None) if ours else None
        _record(
            "post_train",
            plan_json=os.path.exists(plan),
            truncated=truncation is not None,
            truncation_reentrant=getattr(truncation, "reentrant", None),
            removed_input_hooks=getattr(truncation, "removed_input_hooks", None),
        )

    def post_train_unload(self, cfg):
        _record("post_train_unload")
