"""TRL integration: build the plan once, then pass its LoRA config and the callback to
``trl.SFTTrainer``.

>>> from trl import SFTConfig, SFTTrainer                            # doctest: +SKIP
>>> plan = build_plan(model, MidBlockConfig(window="0.2:0.8", rank=16))  # doctest: +SKIP
>>> callback = MidBlockCallback(plan=plan)                           # doctest: +SKIP
>>> trainer = SFTTrainer(model=model, args=SFTConfig(...), train_dataset=ds,
...                      peft_config=plan.lora_config(),             # omit in mode='full'
...                      callbacks=[callback])                       # doctest: +SKIP
>>> callback.bind(trainer)  # drift metrics reach W&B / TensorBoard   # doctest: +SKIP

``midblock_lora_config(model, config)`` remains for one-line use; it builds the same plan.
"""

from __future__ import annotations

from typing import Any

from midblock_plugin.config import MidBlockConfig
from midblock_plugin.plan import MidBlockPlan, build_plan
from midblock_plugin.training.callback import MidBlockCallback


__all__ = ["MidBlockCallback", "MidBlockConfig", "MidBlockPlan", "build_plan", "midblock_lora_config"]


def midblock_lora_config(model_or_config: Any, config: MidBlockConfig | None = None, **overrides: Any):
    """The ``peft.LoraConfig`` for ``config`` on a model, a model config or a model directory
    (``build_plan(model, config).lora_config()``)."""
    config = config or MidBlockConfig()
    if config.mode != "lora":
        raise ValueError("midblock_lora_config is for mode='lora'; in mode='full' pass only MidBlockCallback.")
    return build_plan(model_or_config, config).lora_config(**overrides)
