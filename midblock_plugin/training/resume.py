"""Does an adapter, a PEFT config or a checkpoint agree with the plan? One home for the checks.

Used by the training callback (a ``peft_config`` passed to the trainer, a checkpoint the
run resumes from) and by the Axolotl plugin (``lora_model_dir``, ``resume_from_checkpoint``).
Each checkpoint carries its own plan (``<checkpoint>/midblock/plan.json``, written by
:class:`~midblock_plugin.training.callback.MidBlockCallback` at every save), so a resume is
compared with the plan the checkpoint was trained with, not with a run directory's
``plan.json`` that a later run may have replaced.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from midblock_plugin import io


#: Plan fields that must agree between a checkpoint and the run that resumes from it.
RESUME_FIELDS = (
    "mode",
    "num_layers",
    "layers",
    "layer_rank",
    "lora_alpha",
    "use_rslora",
    "target_modules",
    "extra_trainable",
)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: What the Trainer writes last into a checkpoint: a checkpoint without it was cut off while saving.
TRAINER_STATE = "trainer_state.json"
#: adapter_config.json key -> the plan.json field it states
_SAME_FIELD = {"layers_to_transform": "layers", "r": "layer_rank"}


class PlanMismatch(ValueError):
    """An adapter, PEFT config or checkpoint that was built for another window or rank."""


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _targets(value: Any) -> set[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return {value}
    return set(value)


def lora_mismatches(lora: Any, plan: Any, what: str = "peft_config") -> list[str]:
    """How a ``LoraConfig`` (object or ``adapter_config.json`` dict) differs from a LoRA-mode plan:
    layers, rank, alpha, rsLoRA, target modules, rank / alpha patterns, extra trained modules."""
    out: list[str] = []
    layers = _get(lora, "layers_to_transform")
    if layers is None:
        out.append(f"{what} puts LoRA on every layer (no layers_to_transform) but the window is layers {plan.window}")
    else:
        layers = sorted([layers] if isinstance(layers, int) else layers)
        if layers != list(plan.layers):
            out.append(f"layers_to_transform: {what} {layers} vs the plan's {plan.layers}")
    if _get(lora, "r") != plan.layer_rank:
        out.append(f"r: {what} {_get(lora, 'r')} vs the plan's {plan.layer_rank}")
    alpha = _get(lora, "lora_alpha")
    if alpha is None or not math.isclose(float(alpha), plan.lora_alpha, rel_tol=1e-6):
        out.append(f"lora_alpha: {what} {alpha} vs the plan's {plan.lora_alpha:g}")
    if bool(_get(lora, "use_rslora")) != plan.use_rslora:
        out.append(f"use_rslora: {what} {bool(_get(lora, 'use_rslora'))} vs the plan's {plan.use_rslora}")
    targets = _targets(_get(lora, "target_modules"))
    if targets is not None and plan.target_modules:
        want = set(plan.target_modules)
        # PEFT matches names as suffixes: 'q_proj' in a config stands for 'self_attn.q_proj'
        matched = {t for t in want if t in targets or t.rsplit(".", 1)[-1] in targets}
        if matched != want or len(targets) != len(want):
            out.append(f"target_modules: {what} {sorted(targets)} vs the plan's {plan.target_modules}")
    for key in ("rank_pattern", "alpha_pattern"):
        if _get(lora, key):
            out.append(f"{key}: {what} sets per-module {key.split('_')[0]}s; the plan gives every window layer one")
    if _get(lora, "modules_to_save"):
        out.append(f"modules_to_save: {what} also trains {_get(lora, 'modules_to_save')}, outside the window")
    return out


def model_peft_config(model: Any) -> Any:
    """The active LoRA config of a PEFT model, or ``None`` for a plain model."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    active = getattr(model, "active_adapter", None)
    if isinstance(active, (list, tuple)):
        active = active[0] if active else None
    return configs.get(active) or next(iter(configs.values()))


def check_model_matches_plan(model: Any, plan: Any) -> None:
    """Refuse a trainer whose model (PEFT-wrapped or not) disagrees with the plan's mode and window."""
    lora = model_peft_config(model)
    if plan.mode == "full" and lora is not None:
        raise PlanMismatch(
            "mode='full' but the model is wrapped in a PEFT adapter (peft_config was passed to the trainer): "
            "the window's layers and the adapter would both train, and save_model would write only the adapter, "
            "losing the full-mode training. Remove peft_config (full mode trains the layers themselves), or use "
            "mode='lora' with peft_config=plan.lora_config()."
        )
    if plan.mode == "lora" and lora is not None:
        problems = lora_mismatches(lora, plan)
        if problems:
            raise PlanMismatch(
                f"the LoRA config passed to the trainer does not match the midblock plan ({'; '.join(problems)}). "
                "Build both from one plan: plan = build_plan(model, config); peft_config=plan.lora_config(); "
                "callbacks=[MidBlockCallback(plan=plan)]."
            )


# --------------------------------------------------------------------------- checkpoints


def checkpoint_plan(checkpoint: str | os.PathLike) -> tuple[dict | None, Path]:
    """The plan a checkpoint was trained with (``<checkpoint>/midblock/plan.json``), or ``None``."""
    path = io.artifact(checkpoint, io.PLAN_JSON)
    return (io.read_json(path) if path.is_file() else None), path


def plan_mismatches(saved: dict, plan: Any, what: str = "checkpoint") -> list[str]:
    """Fields of :data:`RESUME_FIELDS` where a saved plan (``plan.json``) and ``plan`` differ,
    as ``"<field>: <what> <saved> vs now <current>"``."""
    now = plan.to_json_dict()
    out = []
    for key in RESUME_FIELDS:
        old, new = saved.get(key), now.get(key)
        if key == "lora_alpha" and old is not None and new is not None and math.isclose(float(old), float(new)):
            continue
        if old != new:
            out.append(f"{key}: {what} {old!r} vs now {new!r}")
    return out


def describe_plan(saved: dict) -> str:
    """``"layers 2-5 of 8, lora rank 16 per layer"``: the window and rank of a plan (``plan.json``
    or ``plan.to_json_dict()``), as the errors name it."""
    mode = saved.get("mode")
    text = f"layers {saved.get('window') or saved.get('layers')} of {saved.get('num_layers')}"
    if mode == "lora":
        return f"{text}, lora rank {saved.get('layer_rank')} per layer"
    return f"{text}, {mode} mode"


def saved_plan(output_dir: str | os.PathLike) -> tuple[dict | None, Path | None]:
    """The plan of the midblock run in ``output_dir``: its ``midblock/plan.json``, else that of its
    last checkpoint; ``(None, None)`` when neither exists or can be read."""
    candidates = [io.artifact(output_dir, io.PLAN_JSON)]
    last = last_checkpoint(output_dir)
    if last is not None:
        candidates.append(io.artifact(last, io.PLAN_JSON))
    for path in candidates:
        if path.is_file():
            try:
                data = io.read_json(path)
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                return data, path
    return None, None


def resume_mismatches(checkpoint: str | os.PathLike, plan: Any) -> tuple[list[str], list[str]]:
    """``(problems, sources)``: how the checkpoint differs from ``plan``, and the files read."""
    checkpoint = Path(checkpoint)
    problems: list[str] = []
    sources: list[str] = []
    adapter = checkpoint / "adapter_config.json"
    if adapter.is_file():
        sources.append(str(adapter))
        if plan.mode == "full":
            problems.append("mode: the checkpoint holds a LoRA adapter but the plan is mode='full'")
        else:
            problems += lora_mismatches(io.read_json(adapter), plan, what="checkpoint adapter")
    saved, where = checkpoint_plan(checkpoint)
    if saved is not None:
        sources.append(str(where))
        seen = {_SAME_FIELD.get(p.split(":")[0], p.split(":")[0]) for p in problems}
        problems += [p for p in plan_mismatches(saved, plan) if p.split(":")[0] not in seen]
    return problems, sources


def check_resume(checkpoint: str | os.PathLike, plan: Any, fix: str) -> None:
    """Raise :class:`PlanMismatch` if ``checkpoint`` was trained with another window, rank or mode.
    ``fix`` says what the user should change (it differs between TRL and Axolotl)."""
    if not Path(checkpoint).is_dir():
        return  # the Trainer reports a missing checkpoint itself
    check_checkpoint_whole(checkpoint)
    problems, sources = resume_mismatches(checkpoint, plan)
    if problems:
        saved, _ = checkpoint_plan(checkpoint)
        plans = (
            f" (the checkpoint: {describe_plan(saved)}; this run: {describe_plan(plan.to_json_dict())})"
            if saved is not None
            else ""
        )
        raise PlanMismatch(
            f"cannot resume from {checkpoint}: it was trained with a different window, rank or mode{plans}: "
            f"{'; '.join(problems)}; recorded in {' and '.join(sources)}. {fix}"
        )


class IncompleteCheckpoint(ValueError):
    """A checkpoint whose save never finished (killed or failed while the Trainer wrote it)."""


def check_checkpoint_whole(checkpoint: str | os.PathLike) -> None:
    """The Trainer writes ``trainer_state.json`` last into a checkpoint; one without it was cut off
    while saving (and the Trainer would load its partial weights, or fail on them, when resuming)."""
    path = Path(checkpoint)
    if (path / TRAINER_STATE).is_file():
        return
    match = _CHECKPOINT.match(path.name)
    step = int(match.group(1)) if match else None
    earlier = [
        c for c in _checkpoints(path.parent) if step is not None and c[0] < step and (c[1] / TRAINER_STATE).is_file()
    ]
    instead = (
        f"remove it to resume from {max(earlier)[1]} (the last whole checkpoint), or pass that path as "
        "resume_from_checkpoint"
        if earlier
        else "remove it, or resume from a whole checkpoint"
    )
    raise IncompleteCheckpoint(
        f"cannot resume from {checkpoint}: it is incomplete (no {TRAINER_STATE}, which the Trainer writes last: its "
        f"save was interrupted, e.g. the process was killed or the disk filled); {instead}."
    )


def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    return [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The highest-numbered ``checkpoint-N`` directory in ``output_dir``, or ``None``."""
    found = _checkpoints(Path(output_dir))
    return max(found)[1] if found else None


def check_adapter_dir(adapter_dir: str | os.PathLike, plan: Any, fix: str) -> None:
    """An existing adapter directory (to continue training) must match the plan's layers and rank."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise PlanMismatch(f"{adapter_dir} holds no adapter_config.json; give a PEFT LoRA adapter directory. {fix}")
    problems = lora_mismatches(io.read_json(path), plan, what="adapter")
    if problems:
        raise PlanMismatch(
            f"{adapter_dir} holds an adapter for a different window or rank ({'; '.join(problems)}). {fix}"
        )


def write_checkpoint_plan(checkpoint: str | os.PathLike, plan_json: dict[str, Any]) -> Path:
    """Write the plan into a checkpoint directory (``<checkpoint>/midblock/plan.json``)."""
    return io.write_json(io.artifact(checkpoint, io.PLAN_JSON), plan_json)
