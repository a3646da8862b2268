"""``midblock plan --emit TOOL``: the config fragment that trains the plan's window, at its rank,
in another trainer, written with that tool's own keys.

:data:`TOOLS` holds one :class:`EmitTool` per ``--emit`` value: the function that writes the
fragment, where its keys are defined (read for this module; the commits are in
``docs/serving.md``), and what the tool cannot express. It is the only place a tool's name is
written: ``midblock plan --emit``'s choices and help read it, and adding a tool is one entry at
the end of this file with its function (and a row in ``docs/serving.md``). Where a tool cannot
express the plan (a full-parameter middle window, a non-integer alpha where the tool types it
``int``), :func:`emit` raises :class:`EmitError` naming the reason, instead of printing something
that would train other layers.

>>> from midblock_plugin.testing import tiny_config
>>> from midblock_plugin.plan import build_plan
>>> print(emit(build_plan(tiny_config("llama", num_layers=5)), "peft").splitlines()[-1])
)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from midblock_plugin.plan import MidBlockPlan


@dataclass(frozen=True)
class EmitTool:
    """One ``--emit`` value: a trainer, and how the plan is written in its keys."""

    name: str = field(metadata={"help": "the --emit value (the key of TOOLS)"})
    display: str = field(metadata={"help": "the tool's name as its project writes it"})
    write: Callable[[MidBlockPlan, EmitTool], str] = field(
        metadata={"help": "(the plan, this entry) -> the fragment, in the tool's keys"}
    )
    source: str = field(
        metadata={
            "help": "where the tool defines the keys the fragment uses (repository, file, "
            "names): the fragment's second comment line"
        }
    )
    form: str = field(metadata={"help": "what the fragment is (YAML, Python, command-line flags)"})
    full_mode: str | None = field(
        default=None,
        metadata={
            "help": "why the tool cannot train a full-parameter middle window (mode='full' is refused with it); "
            "None: the fragment expresses full mode"
        },
    )
    integer_alpha: bool = field(
        default=False,
        metadata={"help": "the tool types lora_alpha as an integer: a plan whose window alpha is not one is refused"},
    )


class EmitError(ValueError):
    """The plan cannot be expressed in the tool's keys without training other layers."""


def tool_names() -> tuple[str, ...]:
    """The ``--emit`` values, read from :data:`TOOLS` when called."""
    return tuple(TOOLS)


def emit(plan: MidBlockPlan, tool: str) -> str:
    """The config fragment of ``plan`` for ``tool`` (a key of :data:`TOOLS`)."""
    spec = TOOLS.get(tool) if isinstance(tool, str) else None
    if spec is None:
        raise EmitError(f"--emit {tool!r} is not a tool; choose one of {', '.join(TOOLS)}.")
    if not plan.layout.has_shapes:
        raise EmitError(
            "--emit needs a MODEL (directory or hub id) to name the target modules; --num-layers alone "
            "knows no module names."
        )
    if plan.mode != "lora" and spec.full_mode is not None:
        full = ", ".join(f"--emit {n}" for n, t in TOOLS.items() if t.full_mode is None)
        raise EmitError(
            f"--emit {spec.name} with --mode full: {spec.full_mode}. Use --mode lora, or train with this "
            f"plugin ({full + ', or ' if full else ''}midblock's TRL integration)."
        )
    if plan.mode == "lora" and spec.integer_alpha:
        _integer_alpha(plan, spec)
    return spec.write(plan, spec)


# --------------------------------------------------------------------------- helpers


def _header(plan: MidBlockPlan, spec: EmitTool, mark: str = "#") -> list[str]:
    """The fragment's first two comment lines: what it trains, and where the keys are defined."""
    what = (
        f"layers {plan.window} of {plan.num_layers} ({plan.architecture}), LoRA rank {plan.layer_rank}, "
        f"alpha {plan.lora_alpha:g}{' (rsLoRA)' if plan.use_rslora else ''}, modules "
        f"{', '.join(plan.target_modules)}"
        if plan.mode == "lora"
        else f"layers {plan.window} of {plan.num_layers} ({plan.architecture}), full-parameter"
    )
    return [f"{mark} midblock plan --emit {spec.name}: {what}", f"{mark} keys as defined in {spec.source}"]


def _integer_alpha(plan: MidBlockPlan, spec: EmitTool) -> int:
    alpha = plan.lora_alpha
    if float(alpha).is_integer():
        return int(alpha)
    raise EmitError(
        f"--emit {spec.name}: the window's lora_alpha is {alpha:g}, but {spec.display} types lora_alpha as an integer, "
        "so the scale alpha/r cannot be reproduced; use --alpha-policy fixed, or a --lora-alpha that gives an integer "
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


# --------------------------------------------------------------------------- one function per tool


def _peft(plan: MidBlockPlan, spec: EmitTool) -> str:
    cfg = plan.lora_config()
    lines = _header(plan, spec) + ["from peft import LoraConfig", "", "lora_config = LoraConfig("]
    values = {
        "r": plan.layer_rank,
        "lora_alpha": plan.lora_alpha,
        "lora_dropout": plan.lora_dropout,
        "use_rslora": plan.use_rslora,
        "target_modules": list(plan.target_modules),
        "layers_to_transform": list(plan.layers),
        "layers_pattern": cfg.layers_pattern,
        "bias": "none",
        "fan_in_fan_out": plan.fan_in_fan_out,
        "task_type": "CAUSAL_LM",
    }
    lines += [f"    {k}={v!r}," for k, v in values.items()] + [")"]
    return "\n".join(lines)


def _axolotl(plan: MidBlockPlan, spec: EmitTool) -> str:
    cfg = plan.config
    lines = _header(plan, spec) + [
        "plugins:",
        "  - midblock_plugin.axolotl.MidBlockPlugin",
        "adapter: midblock",
        f'midblock_layers: "{plan.window}"',
        f"midblock_mode: {plan.mode}",
    ]
    if plan.mode == "lora":
        base_alpha = cfg.base_alpha
        if not float(base_alpha).is_integer():
            raise EmitError(
                f"--emit {spec.name}: lora_alpha {base_alpha:g} is not an integer, and {spec.display} types "
                "lora_alpha as an integer; give an integer --lora-alpha."
            )
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
            lines.append(
                f"# (not expressible: the window's alpha {plan.lora_alpha:g} is not an integer, and Axolotl "
                "types lora_alpha as an integer)"
            )
    else:
        if cfg.train_final_norm:
            lines.append("midblock_train_final_norm: true")
        if cfg.train_embeddings:
            lines.append("midblock_train_embeddings: true")
    return "\n".join(lines)


def _llamafactory(plan: MidBlockPlan, spec: EmitTool) -> str:
    alpha = int(plan.lora_alpha)  # an integer: TOOLS' integer_alpha
    lines = _header(plan, spec) + [
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


def _swift(plan: MidBlockPlan, spec: EmitTool) -> str:
    alpha = int(plan.lora_alpha)  # an integer: TOOLS' integer_alpha
    lines = _header(plan, spec) + [
        "swift sft \\",
        "    --tuner_type lora \\",
        f"    --lora_rank {plan.layer_rank} \\",
        f"    --lora_alpha {alpha} \\",
        f"    --lora_dropout {plan.lora_dropout:g} \\",
        f"    --use_rslora {'true' if plan.use_rslora else 'false'} \\",
        f"    --target_regex '{_target_regex(plan)}'",
    ]
    return "\n".join(lines)


def _unsloth(plan: MidBlockPlan, spec: EmitTool) -> str:
    lines = _header(plan, spec) + [
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


# --------------------------------------------------------------------------- the table


#: Every ``--emit`` value of ``midblock plan``, by name (the only place a tool's name is written).
TOOLS: dict[str, EmitTool] = {
    t.name: t
    for t in (
        EmitTool(
            "peft",
            "PEFT",
            _peft,
            "huggingface/peft src/peft/tuners/lora/config.py (LoraConfig: r, lora_alpha, target_modules, "
            "layers_to_transform, layers_pattern, use_rslora, lora_dropout, bias, fan_in_fan_out)",
            "Python: LoraConfig(...)",
            full_mode="PEFT configures adapters; full-parameter training of the window is not a PEFT config",
        ),
        EmitTool(
            "axolotl",
            "Axolotl",
            _axolotl,
            "this plugin's keys (docs/axolotl.md#keys) and Axolotl's own lora_r, lora_alpha, lora_dropout, "
            "peft_use_rslora, lora_target_modules, peft_layers_to_transform, peft_layers_pattern "
            "(axolotl-ai-cloud/axolotl src/axolotl/utils/schemas/peft.py)",
            "YAML",
        ),
        EmitTool(
            "llamafactory",
            "LLaMA-Factory",
            _llamafactory,
            "hiyouga/LLaMA-Factory src/llamafactory/hparams/finetuning_args.py (LoraArguments: lora_rank, "
            "lora_alpha: int, lora_dropout, lora_target, use_rslora) and src/llamafactory/model/adapter.py "
            "(_setup_lora_tuning passes the comma-split lora_target to peft.LoraConfig(target_modules=...))",
            "YAML",
            full_mode="LLaMA-Factory's freeze tuning trains the last n layers (freeze_trainable_layers > 0) or the "
            "first n (< 0) only (src/llamafactory/model/adapter.py, _setup_freeze_tuning): a middle "
            "window cannot be expressed",
            integer_alpha=True,
        ),
        EmitTool(
            "swift",
            "ms-swift",
            _swift,
            "modelscope/ms-swift swift/arguments/tuner_args.py (TunerArguments: lora_rank, lora_alpha: int, "
            "lora_dropout, use_rslora, target_regex, which replaces target_modules and reaches "
            "peft.LoraConfig(target_modules=<regex>), full-matched against module names) and "
            "swift/arguments/base_args/base_args.py (tuner_type; 'train_type' in ms-swift 3.x)",
            "swift sft flags",
            full_mode="midblock does not emit ms-swift's full-parameter keys (freeze_parameters / "
            "trainable_parameters); they were not verified to select exactly the window",
            integer_alpha=True,
        ),
        EmitTool(
            "unsloth",
            "Unsloth",
            _unsloth,
            "unslothai/unsloth unsloth/models/llama.py (FastLanguageModel.get_peft_model: r, lora_alpha, "
            "target_modules, lora_dropout, bias, layers_to_transform, use_rslora; it passes "
            "layers_to_transform to peft.LoraConfig and drops layers_pattern)",
            "Python: FastLanguageModel.get_peft_model(...)",
            full_mode="Unsloth's full finetuning (full_finetuning=True) trains every layer; it has no key for a "
            "window",
        ),
    )
}
#: ``--emit`` values (the keys of :data:`TOOLS` when this module was imported; read :data:`TOOLS` itself).
EMIT_TOOLS = tuple(TOOLS)
