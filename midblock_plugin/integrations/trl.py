"""TRL integration: pass ``MidBlockCallback`` (and, in LoRA mode, ``midblock_lora_config``)
to ``trl.SFTTrainer``.

>>> from trl import SFTConfig, SFTTrainer                            # doctest: +SKIP
>>> mb = MidBlockConfig(window="0.2:0.8", rank=16)                   # doctest: +SKIP
>>> trainer = SFTTrainer(model=model, args=SFTConfig(...), train_dataset=ds,
...                      peft_config=midblock_lora_config(model, mb),
...                      callbacks=[MidBlockCallback(mb)])            # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from midblock_plugin.adapters import lora_config
from midblock_plugin.callbacks import MidBlockCallback
from midblock_plugin.config import MidBlockConfig
from midblock_plugin.plan import build_plan

__all__ = ["MidBlockCallback", "MidBlockConfig", "midblock_lora_config"]


def midblock_lora_config(model_or_config: Any, config: MidBlockConfig | None = None, **overrides: Any):
    """The ``peft.LoraConfig`` for ``config`` on a model, a model config or a model directory."""
    config = config or MidBlockConfig()
    if config.mode != "lora":
        raise ValueError("midblock_lora_config is for mode='lora'; in mode='full' pass only MidBlockCallback.")
    return lora_config(build_plan(model_or_config, config), **overrides)
