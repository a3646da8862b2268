"""``midblock plan --emit TOOL``: the config fragment that trains the plan's window, at its rank,
in another trainer, written with that tool's own keys.

Each fragment cites where its keys are defined (read for this module; the commits are in
``docs/serving.md``). Where a tool cannot express the plan (a full-parameter middle window, a
non-integer alpha where the tool types it ``int``), :func:`emit` raises :class:`EmitError`
naming the reason, instead of printing something that would train other layers.

>>> from midblock_plugin.testing import tiny_config
>>> from midblock_plugin.plan import build_plan
>>> print(emit(build_plan(tiny_config("llama", num_layers=5)), "peft").splitlines()[-1])
)
"""

from __future__ import annotations

import re
from typing import Any

from midblock_plugin.plan import MidBlockPlan


#: ``--emit`` values.
EMIT_TOOLS = ("peft", "axolotl", "llamafactory", "swift", "unsloth")

SOURCES = {
    "peft": "huggingface/peft src/peft/tuners/lora/config.py (LoraConfig: r, lora_alpha, target_modules, "
            "layers_to_transform, layers_pattern, use_rslora, lora_dropout, bias, fan_in_fan_out)",
    "axolotl": "this plugin's keys (docs/axolotl.md#keys) and Axolotl's own lora_r, lora_alpha, lora_dropout, "
               "peft_use_rslora, lora_target_modules, peft_layers_to_transform, peft_layers_pattern "
               "(axolotl-ai-cloud/axolotl src/axolotl/utils/schemas/peft.py)",
    "llamafactory": "hiyouga/LLaMA-Factory src/llamafactory/hparams/finetuning_args.py (LoraArguments: lora_rank, "
                    "lora_alpha: int, lora_dropout, lora_target, use_rslora) and src/llamafactory/model/adapter.py "
                    "(_setup_lora_tuning passes the comma-split lora_target to peft.LoraConfig(target_modules=...))",
    "swift": "modelscope/ms-swift swift/arguments/tuner_args.py (TunerArguments: lora_rank, lora_alpha: int, "
             "lora_dropout, use_rslora, target_regex, which replaces target_modules and reaches "
             "peft.LoraConfig(target_modules=<regex>), full-matched against module names) and "
             "swift/arguments/base_args/base_args.py (tuner_type; 'train_type' in ms-swift 3.x)",
    "unsloth": "unslothai/unsloth unsloth/models/llama.py (FastLanguageModel.get_peft_model: r, lora_alpha, "
               "target_modules, lora_dropout, bias, layers_to_transform, use_rslora; it passes "
               "layers_to_transform to peft.LoraConfig and drops layers_pattern)",
}


class EmitError(ValueError):
    """The plan cannot be expressed in the tool's keys without training other layers."""


def emit(plan: MidBlockPlan, tool: str) -> str:
    """The config fragment of ``plan`` for ``tool`` (one of :data:`EMIT_TOOLS`)."""
    if tool not in EMIT_TOOLS:
        raise EmitError(f"--emit {tool!r} is not a tool; choose one of {', '.join(EMIT_TOOLS)}.")
    if not plan.layout.has_shapes:
        raise EmitError("--emit needs a MODEL (directory or hub id) to name the target modules; --num-layers alone "
                        "knows no module names.")
    if plan.mode != "lora" and tool != "axolotl":
        raise EmitError(_full_mode_reason(tool))
    return {"peft": _peft, "axolotl": _axolotl, "llamafactory": _llamafactory, "swift": _swift,
            "unsloth": _unsloth}[tool](plan)


# --------------------------------------------------------------------------- helpers


def _header(plan: MidBlockPlan, tool: str, mark: str = "#") -> list[str]:
    what = (f"layers {plan.window} of {plan.num_layers} ({plan.architecture}), LoRA rank {plan.layer_rank}, "
            f"alpha {plan.lora_alpha:g}{' (rsLoRA)' if plan.use_rslora else ''}, modules "
            f"{', '.join(plan.target_modules)}" if plan.mode == "lora"
            else f"layers {plan.window} of {plan.num_layers} ({plan.architecture}), full-parameter")
    return [f"{mark} midblock plan --emit {tool}: {what}",
            f"{mark} keys as defined in {SOURCES[tool]}"]


def _integer_alpha(plan: MidBlockPlan, tool: str) -> int:
    alpha = plan.lora_alpha
    if float(alpha).is_integer():
        return int(alpha)
    raise EmitError(
        f"--emit {tool}: the window's lora_alpha is {alpha:g}, but {tool} types lora_alpha as an integer, so the "
        "scale alpha/r cannot be reproduced; use --alpha-policy fixed, or a --lora-alpha that gives an integer "
        f"(with --alpha-policy ratio the window's alpha is lora_alpha * {plan.layer_rank}/{plan.baseline_rank})."
    )


def _full_names(plan: MidBlockPlan) -> list[str]:
    """Every targeted module by its full name on the causal-LM model (PEFT's key)."""
    return [f"{plan.layers_path}.{i}.{t}" for i in plan.layers for t in plan.target_modules]


def _short_names(plan: MidBlockPlan) -> list[str]:
    """The target modules by their last name where that selects exactly the same modules."""
    names = list(plan.layout.linears[plan.layers[0]])
    out = []
    for t in plan.target_modules:
        short = t.rsplit(".", 1)[-1]
        out.append(short if [n for n in names if n == short or n.endswith("." + short)] == [t] else t)
    return out


def _target_regex(plan: MidBlockPlan) -> str:
    layers = "|".join(str(i) for i in plan.layers)
    modules = "|".join(re.escape(t) for t in plan.target_modules)
    return rf"^(?:.*\.)?{re.escape(plan.layers_path)}\.(?:{layers})\.(?:{modules})$"


def _yaml_list(items: list[Any]) -> str:
    return "[" + ", ".join(str(i) for i in items) + "]"


def _full_mode_reason(tool: str) -> str:
    reasons = {
        "llamafactory": "LLaMA-Factory's freeze tuning trains the last n layers (freeze_trainable_layers > 0) or the "
                        "first n (< 0) only (src/llamafactory/model/adapter.py, _setup_freeze_tuning): a middle "
                        "window cannot be expressed",
        "unsloth": "Unsloth's full finetuning (full_finetuning=True) trains every layer; it has no key for a window",
        "peft": "PEFT configures adapters; full-parameter training of the window is not a PEFT config",
        "swift": "midblock does not emit ms-swift's full-parameter keys (freeze_parameters / trainable_parameters); "
                 "they were not verified to select exactly the window",
    }
    return (f"--emit {tool} with --mode full: {reasons[tool]}. Use --mode lora, or train with this plugin "
            "(--emit axolotl, or midblock's TRL integration).")


# --------------------------------------------------------------------------- one function per tool


def _peft(plan: MidBlockPlan) -> str:
    cfg = plan.lora_config()
    lines = _header(plan, "peft") + ["from peft import LoraConfig", "", "lora_config = LoraConfig("]
    values = {
        "r": plan.layer_rank, "lora_alpha": plan.lora_alpha, "lora_dropout": plan.lora_dropout,
        "use_rslora": plan.use_rslora, "target_modules": list(plan.target_modules),
        "layers_to_transform": list(plan.layers), "layers_pattern": cfg.layers_pattern, "bias": "none",
        "fan_in_fan_out": plan.fan_in_fan_out, "task_type": "CAUSAL_LM",
    }
    lines += [f"    {k}={v!r}," for k, v in values.items()] + [")"]
    return "\n".join(lines)


def _axolotl(plan: MidBlockPlan) -> str:
    cfg = plan.config
    lines = _header(plan, "axolotl") + [
        "plugins:",
        "  - midblock_plugin.axolotl.MidBlockPlugin",
        "adapter: midblock",
        f'midblock_layers: "{plan.window}"',
        f"midblock_mode: {plan.mode}",
    ]
    if plan.mode == "lora":
        base_alpha = cfg.base_alpha
        if not float(base_alpha).is_integer():
            raise EmitError(f"--emit axolotl: lora_alpha {base_alpha:g} is not an integer, and Axolotl types "
                            "lora_alpha as an integer; give an integer --lora-alpha.")
        lines += [
            f"midblock_budget: {cfg.budget}",
            f"midblock_alpha_policy: {cfg.alpha_policy}",
            f"lora_r: {plan.baseline_rank}                   # the uniform-LoRA rank r whose budget is matched",
            f"lora_alpha: {int(base_alpha)}",
            f"lora_dropout: {plan.lora_dropout:g}",
            f"peft_use_rslora: {'true' if plan.use_rslora else 'false'}",
            f"lora_target_modules: {_yaml_list(_short_names(plan))}",
            "",
            "# Without the plugin, Axolotl's own keys give the same layers, rank and alpha (no budget arithmetic,",
            "# no backward truncation, no drift monitor):",
        ]
        if float(plan.lora_alpha).is_integer():
            lines += [
                "# adapter: lora",
                f"# lora_r: {plan.layer_rank}",
                f"# lora_alpha: {int(plan.lora_alpha)}",
                f"# lora_dropout: {plan.lora_dropout:g}",
                f"# peft_use_rslora: {'true' if plan.use_rslora else 'false'}",
                f"# lora_target_modules: {_yaml_list(_short_names(plan))}",
                f"# peft_layers_to_transform: {_yaml_list(plan.layers)}",
                f"# peft_layers_pattern: [{plan.layers_pattern}]",
            ]
        else:
            lines.append(f"# (not expressible: the window's alpha {plan.lora_alpha:g} is not an integer, and Axolotl "
                         "types lora_alpha as an integer)")
    else:
        if cfg.train_final_norm:
            lines.append("midblock_train_final_norm: true")
        if cfg.train_embeddings:
            lines.append("midblock_train_embeddings: true")
    return "\n".join(lines)


def _llamafactory(plan: MidBlockPlan) -> str:
    alpha = _integer_alpha(plan, "llamafactory")
    lines = _header(plan, "llamafactory") + [
        "# LLaMA-Factory has no layers_to_transform key: the window is given as the full module names in",
        "# lora_target, which PEFT matches exactly (a name equal to the module's key).",
        "finetuning_type: lora",
        f"lora_rank: {plan.layer_rank}",
        f"lora_alpha: {alpha}",
        f"lora_dropout: {plan.lora_dropout:g}",
        f"use_rslora: {'true' if plan.use_rslora else 'false'}",
        f"lora_target: {','.join(_full_names(plan))}",
    ]
    return "\n".join(lines)


def _swift(plan: MidBlockPlan) -> str:
    alpha = _integer_alpha(plan, "swift")
    lines = _header(plan, "swift") + [
        "swift sft \\",
        "    --tuner_type lora \\",
        f"    --lora_rank {plan.layer_rank} \\",
        f"    --lora_alpha {alpha} \\",
        f"    --lora_dropout {plan.lora_dropout:g} \\",
        f"    --use_rslora {'true' if plan.use_rslora else 'false'} \\",
        f"    --target_regex '{_target_regex(plan)}'",
    ]
    return "\n".join(lines)


def _unsloth(plan: MidBlockPlan) -> str:
    lines = _header(plan, "unsloth") + [
        "from unsloth import FastLanguageModel",
        "",
        "model = FastLanguageModel.get_peft_model(",
        "    model,",
        f"    r={plan.layer_rank!r},",
        f"    lora_alpha={plan.lora_alpha!r},",
        f"    lora_dropout={plan.lora_dropout!r},",
        f"    target_modules={_short_names(plan)!r},",
        f"    layers_to_transform={list(plan.layers)!r},",
        f"    use_rslora={plan.use_rslora!r},",
        '    bias="none",',
        ")",
    ]
    return "\n".join(lines)
