"""Adapter construction: the PEFT ``LoraConfig`` of a plan, full-mode freezing, and the
check that only the window trains.

The LoRA adapter is a *plain* PEFT LoRA (``layers_to_transform`` + ``layers_pattern``),
so a saved adapter loads with PEFT alone, without this package.

>>> from midblock_plugin.testing import tiny_model
>>> from midblock_plugin.plan import build_plan
>>> model = tiny_model("llama", num_layers=5)
>>> build_plan(model).lora_config().layers_to_transform
[1, 2, 3]
"""

from __future__ import annotations

from typing import Any

from midblock_plugin.architecture import model_quantization, unwrap
from midblock_plugin.plan import MidBlockPlan
from midblock_plugin.window import WindowError


def lora_config(plan: MidBlockPlan, **overrides: Any):
    """The plan's ``peft.LoraConfig`` (same as :meth:`MidBlockPlan.lora_config`)."""
    return plan.lora_config(**overrides)


def full_mode_trainable_names(model: Any, plan: MidBlockPlan) -> set[str]:
    """Names of the parameters full mode trains on the unwrapped ``model``: the window's
    layers, plus the final norm / input embeddings when the config opts in."""
    layout = plan.layout
    prefixes = tuple(layout.layer_prefix(i) for i in plan.layers)
    named = dict(model.named_parameters())
    names = {n for n in named if n.startswith(prefixes)}
    if plan.config.train_final_norm and layout.final_norm_name:
        names |= {n for n in named if n.startswith(layout.final_norm_name + ".")}
    if plan.config.train_embeddings:
        ids = {id(p) for p in model.get_input_embeddings().parameters()}
        names |= {n for n, p in named.items() if id(p) in ids}
    return names


def apply_full_mode(model: Any, plan: MidBlockPlan) -> int:
    """Freeze everything but the window's layers (and opted-in extras). Must run before
    the optimizer and before ``deepspeed.initialize``. Returns the trainable count."""
    base = unwrap(model)
    check_full_mode_base(base, plan)
    names = full_mode_trainable_names(base, plan)
    for name, p in base.named_parameters():
        p.requires_grad_(name in names)
    return verify_trainable(model, plan)


def check_full_mode_base(model: Any, plan: MidBlockPlan) -> None:
    """Full mode updates the base weights, which a quantized model (QLoRA) does not hold in
    a trainable form: a ``ValueError`` with the fix, before anything is frozen or trained."""
    kind = model_quantization(model)
    if kind is not None:
        raise ValueError(
            f"mode='full' trains the base weights of layers {plan.window}, but this model is loaded quantized "
            f"({kind.replace('bnb-', 'bitsandbytes ')}), and quantized weights cannot be trained. Use mode='lora' "
            "(QLoRA: a LoRA adapter on the window's layers over the quantized base), or load the model without "
            "quantization (no BitsAndBytesConfig / load_in_4bit / load_in_8bit) to train the layers themselves."
        )


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
    if plan.mode == "full":
        allowed_extra = {
            n for n in full_mode_trainable_names(unwrap(model), plan) if plan.layout.layer_index(n) is None
        }
    window = set(plan.layers)
    outside = []
    for name in trainable:
        idx = plan.layout.layer_index(name)
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
