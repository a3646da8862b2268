"""TRL integration: build the plan once, then pass its LoRA config and the callback to
``trl.SFTTrainer``.

>>> from trl import SFTConfig, SFTTrainer                            # doctest: +SKIP
>>> plan = build_plan(model, MidBlockConfig(window="0.2:0.8", rank=16))  # doctest: +SKIP
>>> callback = MidBlockCallback(plan=plan)                           # doctest: +SKIP
>>> trainer = SFTTrainer(model=model, args=SFTConfig(...), train_dataset=ds,
...                      peft_config=plan.lora_config(),             # omit in mode='full'
...                      callbacks=[callback])                       # doctest: +SKIP
>>> callback.bind(trainer)  # drift metrics reach W&B / TensorBoard   # doctest: +SKIP

With gradient checkpointing (the 32B recipe), let midblock choose the mode from the
installed DeepSpeed before the model loads, and keep it after TRL built the trainer:

>>> use_reentrant, why = checkpointing_mode(sft_config)            # doctest: +SKIP
>>> trainer = SFTTrainer(...)                                       # doctest: +SKIP
>>> keep_checkpointing_mode(trainer, use_reentrant)                 # doctest: +SKIP

``midblock_lora_config(model, config)`` remains for one-line use; it builds the same plan.

The run owns its ``output_dir`` (:mod:`midblock_plugin.training.output_dir`): the callback
refuses, at trainer init, a directory another run holds or whose previous midblock run was
trained with another plan (``MidBlockCallback(plan=plan, overwrite=True)`` replaces that run),
and records ``midblock-run.json``. A script can ask the same before loading any weights:

>>> plan = build_plan("path/to/model", config)                      # doctest: +SKIP
>>> check_output_dir(sft_config.output_dir, plan)                   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from midblock_plugin.config import MidBlockConfig
from midblock_plugin.plan import MidBlockPlan, build_plan
from midblock_plugin.training.callback import MidBlockCallback
from midblock_plugin.training.output_dir import CALLBACK_OVERWRITE, TrainingDirectory, main_process


__all__ = [
    "MidBlockCallback",
    "MidBlockConfig",
    "MidBlockPlan",
    "build_plan",
    "check_output_dir",
    "checkpointing_mode",
    "keep_checkpointing_mode",
    "midblock_lora_config",
    "zero3_enabled",
]


def midblock_lora_config(model_or_config: Any, config: MidBlockConfig | None = None, **overrides: Any):
    """The ``peft.LoraConfig`` for ``config`` on a model, a model config or a model directory
    (``build_plan(model, config).lora_config()``)."""
    config = config or MidBlockConfig()
    if config.mode != "lora":
        raise ValueError("midblock_lora_config is for mode='lora'; in mode='full' pass only MidBlockCallback.")
    return build_plan(model_or_config, config).lora_config(**overrides)


def check_output_dir(
    output_dir: Any, plan: MidBlockPlan, overwrite: bool = False, overwrite_hint: str = CALLBACK_OVERWRITE
) -> None:
    """What :class:`MidBlockCallback` checks at trainer init, before any weights load: raise
    :class:`~midblock_plugin.io.RunDirectoryError` (a ``ValueError``) naming the other run (pid,
    host) if one holds ``output_dir``, or naming both plans if the previous midblock run there was
    trained with another plan and not ``overwrite``. Nothing is written; a no-op on ranks other
    than 0 (``RANK``). ``overwrite_hint``: how the error names the switch (e.g. ``--overwrite``)."""
    if main_process():
        TrainingDirectory(output_dir, plan, overwrite=overwrite, overwrite_hint=overwrite_hint).check()


def zero3_enabled(training_args: Any) -> bool:
    """Whether ``training_args`` train under DeepSpeed ZeRO stage 3: its ``deepspeed`` config, or
    the DeepSpeed plugin ``accelerate launch`` configured (what TRL itself checks)."""
    plugin = getattr(training_args, "deepspeed_plugin", None)
    if plugin is not None:
        return getattr(plugin, "zero_stage", None) == 3
    deepspeed = getattr(training_args, "deepspeed", None)
    if deepspeed:
        from midblock_plugin.deepspeed_configs import zero_stage

        return zero_stage(deepspeed) == 3
    return False


def checkpointing_mode(training_args: Any, use_reentrant: bool | None = None) -> tuple[bool, str] | None:
    """Choose the gradient checkpointing mode of ``training_args`` and write it into them;
    ``(use_reentrant, reason)``, or ``None`` when checkpointing is off.

    ``use_reentrant``: the user's choice (``None``: midblock chooses non-reentrant, or
    reentrant under ZeRO-3 on a DeepSpeed older than ``compat.ZERO3_NONREENTRANT_MIN``). An
    explicit non-reentrant request that DeepSpeed cannot run is a ``ValueError`` here, before
    the model loads, rather than a ``CheckpointError`` on the first backward.
    """
    from midblock_plugin import compat

    if not compat.checkpointing_on(training_args):
        if use_reentrant is not None:
            raise ValueError(
                f"use_reentrant={use_reentrant} chooses the gradient checkpointing mode, but "
                "gradient_checkpointing is off; turn it on or leave use_reentrant unset."
            )
        return None
    chosen, reason = compat.checkpointing_mode(zero3_enabled(training_args), use_reentrant)
    _write_mode(training_args, chosen)
    compat.logger.info("midblock: gradient checkpointing %s", describe_mode(chosen, reason))
    return chosen, reason


def keep_checkpointing_mode(trainer: Any, use_reentrant: bool) -> bool:
    """Put back the chosen mode if ``trl.SFTTrainer`` changed it; ``True`` if it did.

    TRL 1.x switches PEFT + ZeRO-3 + checkpointing to reentrant (its workaround for the DeepSpeed
    bug fixed in 0.19.3, which :func:`checkpointing_mode` already accounts for); where the
    user gave checkpointing kwargs, transformers 5.24 shares that dict between both argument
    names and the switch takes effect. Checkpointing is enabled only in ``train()``, so
    setting the mode back before it takes effect everywhere.
    """
    from midblock_plugin import compat

    args = trainer.args
    if all(
        bool((getattr(args, n, None) or {}).get("use_reentrant", False)) == use_reentrant
        for n in _MODE_NAMES
        if hasattr(args, n)
    ):
        return False
    _write_mode(args, use_reentrant)
    if use_reentrant is False:
        compat.logger.info(
            "midblock: gradient checkpointing kept non-reentrant (TRL switches PEFT + ZeRO-3 to "
            "reentrant, a workaround only DeepSpeed < %s needs)",
            ".".join(map(str, compat.ZERO3_NONREENTRANT_MIN)),
        )
    return True


def describe_mode(use_reentrant: bool, reason: str) -> str:
    """``"non-reentrant (the default)"``, ``"reentrant (as configured)"``, ..."""
    mode = "reentrant" if use_reentrant else "non-reentrant"
    return reason if reason.startswith(mode) else f"{mode} ({reason})"


#: transformers >= 5.24 reads ``activation_checkpointing_kwargs``; older ones ``gradient_checkpointing_kwargs``.
_MODE_NAMES = ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs")


def _write_mode(args: Any, use_reentrant: bool) -> None:
    names = [n for n in _MODE_NAMES if hasattr(args, n)]
    current = next((getattr(args, n) for n in names if getattr(args, n, None)), None) or {}
    kwargs = dict(current, use_reentrant=use_reentrant)
    for name in names:  # one dict under both names, as transformers 5.24 keeps them
        setattr(args, name, kwargs)
