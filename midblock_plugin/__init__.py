"""midblock: Mid-Block Efficient Tuning (Zhao et al., ACL 2026) for TRL, Axolotl and PEFT.

The public API is one import::

    from midblock_plugin import MidBlockConfig, MidBlockPlan, build_plan, MidBlockCallback, EvalSettings

Names that need torch / transformers (the plan, the callback) are loaded on first use, so
``import midblock_plugin`` stays cheap. The core (window arithmetic, plans, adapters,
training hooks) does not import any framework integration; integrations live under
``midblock_plugin.integrations``.
"""

from __future__ import annotations

import importlib
from typing import Any


__version__ = "0.1.0"

from midblock_plugin.config import MidBlockConfig  # noqa: E402
from midblock_plugin.window import WindowError, resolve_layers  # noqa: E402


#: Public names loaded lazily, and the module that defines each (the old import paths keep working).
_LAZY = {
    "MidBlockPlan": "midblock_plugin.plan",
    "build_plan": "midblock_plugin.plan",
    "MidBlockCallback": "midblock_plugin.training.callback",
    "EvalSettings": "midblock_plugin.evaluation.settings",
    "EvalCallback": "midblock_plugin.evaluation.callback",
}

__all__ = ["MidBlockConfig", "WindowError", "resolve_layers", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'midblock_plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
