"""Adapter construction: the PEFT ``LoraConfig`` of a plan, and full-mode freezing.

The LoRA adapter is a *plain* PEFT LoRA (``layers_to_transform`` + ``layers_pattern``),
so a saved adapter loads with PEFT alone, without this package.

>>> from midblock_plugin.testing import tiny_model
>>> from midblock_plugin.plan import build_plan
>>> model = tiny_model("llama", num_layers=5)
>>> lora_config(build_plan(model)).layers_to_transform
[1, 2, 3]
"""

from __future__ import annotations

from typing import Any

from midblock_plugin.plan import MidBlockPlan, full_mode_trainable_names
from midblock_plugin.window import WindowError, _unwrap


def lora_config(plan: MidBlockPlan, **overrides: Any):
    """A ``peft.LoraConfig`` that puts LoRA on the plan's layers only, at the plan's rank."""
    from peft import LoraConfig

    if plan.mode != "lora":
        raise ValueError(f"lora_config needs a plan with mode='lora' (this plan has mode={plan.mode!r}).")
    if not plan.target_modules:
        raise ValueError("the plan has no resolved target modules; build it from a model or a model config.")
    ranks = set(plan.ranks.values())
    kwargs: dict[str, Any] = dict(
        r=ranks.pop(),
        lora_alpha=plan.lora_alpha,
        lora_dropout=plan.lora_dropout,
        use_rslora=plan.use_rslora,
        target_modules=list(plan.target_modules),
        layers_to_transform=list(plan.layers),
        layers_pattern=plan.layers_pattern,
        bias="none",
        fan_in_fan_out=plan.fan_in_fan_out,
        task_type="CAUSAL_LM",
    )
    kwargs.update(overrides)
    return LoraConfig(**kwargs)


def apply_full_mode(model: Any, plan: MidBlockPlan) -> int:
    """Freeze everything but the window's layers (and opted-in extras). Must run before
    the optimizer and before ``deepspeed.initialize``. Returns the trainable count."""
    base = _unwrap(model)
    names = full_mode_trainable_names(base, plan, plan.config)
    for name, p in base.named_parameters():
        p.requires_grad_(name in names)
    return verify_trainable(model, plan)


def _layer_index(name: str, plan: MidBlockPlan) -> int | None:
    marker = f"{plan.layers_pattern}."
    pos = name.find("." + marker) if not name.startswith(marker) else -1
    rest = name[pos + 1 + len(marker):] if pos >= 0 else (name[len(marker):] if name.startswith(marker) else None)
    if rest is None:
        return None
    head = rest.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def trainable_parameters(model: Any) -> dict[str, int]:
    """Name -> element count of every parameter that requires grad (``ds_numel`` under ZeRO-3)."""
    return {n: int(getattr(p, "ds_numel", 0) or p.numel()) for n, p in model.named_parameters() if p.requires_grad}


def verify_trainable(model: Any, plan: MidBlockPlan) -> int:
    """Check that training will touch the window only; return the trainable count.

    Raises if nothing is trainable ("trained nothing" is never silent) or if a
    trainable parameter lies outside the window (e.g. a LoRA config that is not ours).
    """
    trainable = trainable_parameters(model)
    if not trainable:
        raise WindowError(
            "no parameter requires grad: nothing would be trained. In lora mode pass "
            "peft_config=midblock_lora_config(...) to the trainer; in full mode use mode='full'."
        )
    allowed_extra: set[str] = set()
    if plan.mode == "full" and plan.config is not None:
        base = _unwrap(model)
        allowed_extra = {n for n in full_mode_trainable_names(base, plan, plan.config) if _layer_index(n, plan) is None}
    window = set(plan.layers)
    outside = []
    for name in trainable:
        idx = _layer_index(name, plan)
        if idx is None:
            if not any(name.endswith(e) for e in allowed_extra):
                outside.append(name)
        elif idx not in window:
            outside.append(name)
    if plan.mode == "lora":
        not_lora = [n for n in trainable if "lora_" not in n]
        outside.extend(n for n in not_lora if n not in outside)
        if not any("lora_" in n for n in trainable):
            raise WindowError(
                "mode='lora' but the model has no LoRA parameters: pass peft_config=midblock_lora_config(...) "
                "to the trainer (or use mode='full')."
            )
    if outside:
        shown = ", ".join(sorted(outside)[:5]) + (f" (+{len(outside) - 5} more)" if len(outside) > 5 else "")
        raise WindowError(
            f"parameters outside the mid-block window {plan.window} would be trained: {shown}. "
            "Build the LoRA config with midblock_lora_config(...) from the same MidBlockConfig, and do not add "
            "other trainable modules (modules_to_save, unfrozen_parameters)."
        )
    return sum(trainable.values())
