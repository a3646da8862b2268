"""DeepSpeed ZeRO-3 configs shipped with midblock (``"auto"`` values are filled by the HF Trainer).

>>> from midblock_plugin.deepspeed_configs import config_path
>>> config_path("zero3").endswith("zero3.json")
True
"""

from __future__ import annotations

import json
import os
from typing import Any


_HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ("zero3", "zero3_offload")


def config_path(name_or_path: str) -> str:
    """Path of a shipped config by name (``zero3``, ``zero3_offload``), or a user path as is."""
    if name_or_path in NAMES:
        return os.path.join(_HERE, f"{name_or_path}.json")
    if os.path.exists(name_or_path):
        return name_or_path
    raise FileNotFoundError(
        f"deepspeed config {name_or_path!r}: not a file and not a shipped config; use one of {', '.join(NAMES)} or a JSON path."
    )


def zero_stage(config: str | os.PathLike | dict[str, Any] | None) -> int | None:
    """The ZeRO stage of a DeepSpeed config (a shipped name, a JSON path or a dict), or ``None``."""
    if config is None:
        return None
    if not isinstance(config, dict):
        with open(config_path(str(config)), encoding="utf-8") as fh:
            config = json.load(fh)
    stage = (config.get("zero_optimization") or {}).get("stage")
    return int(stage) if isinstance(stage, (int, float)) and not isinstance(stage, bool) else None
