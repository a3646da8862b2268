"""``MidBlockConfig``: what the user asks for (window, mode, rank budget, alpha policy).

The config is validated on construction, before any model is loaded. Turning it into
concrete layers and ranks for a given model is :mod:`midblock_plugin.plan`'s job.

>>> cfg = MidBlockConfig(segments="01110", rank=64, lora_alpha=128, alpha_policy="fixed")
>>> cfg.mode
'lora'
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from midblock_plugin.window import (
    WindowError,
    check_one_window_form,
    parse_fraction_window,
    read_window_file,
    validate_mask,
)


MODES = ("lora", "full")
BUDGETS = ("match", "none", "serve")
ALPHA_POLICIES = ("ratio", "fixed")
TARGET_PRESETS = ("attention", "mlp", "all-linear")


def _number(value: Any) -> bool:
    """A real, finite number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _string(name: str, value: Any, example: str) -> None:
    if not isinstance(value, str):
        raise WindowError(f"{name}={value!r} must be a string, {example}.")


def _choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}.")


@dataclass
class MidBlockConfig:
    """Mid-Block Efficient Tuning settings (Zhao et al., ACL 2026, arXiv 2604.11838).

    Give at most one of ``window``, ``segments``, ``layers``, ``window_from``; with none
    the paper's 20%-80% window (``"0.2:0.8"``) is used.
    """

    window: str | None = field(default=None, metadata={"help": "Fraction window 'a:b' = layers [floor(a*L), floor(b*L)). Default '0.2:0.8'."})
    segments: str | None = field(default=None, metadata={"help": "The paper's segment mask, bottom first, e.g. '01110' (5 segments, middle three active)."})
    layers: str | list[int] | None = field(default=None, metadata={"help": "Explicit layers: '3-11', '3,4,9-12' or a list; negative indices count from the top."})
    window_from: str | None = field(default=None, metadata={"help": "Path of an analysis.json written by 'midblock analyze'; its recommended layers are used."})
    mode: str = field(default="lora", metadata={"help": "'lora' (the paper's method: LoRA on the window's layers) or 'full' (full-parameter updates of the window's layers)."})
    rank: int = field(default=16, metadata={"help": "Rank r of the uniform-LoRA baseline the budget is matched to."})
    budget: str = field(default="match", metadata={"help": "'match': active layers get rank floor(r*L/n) so the rank sum equals uniform LoRA at rank r; 'none': active layers get rank r; 'serve': the largest rank vLLM serves (its --max-lora-rank sizes 1, 8, 16, 32, 64, 128, 256, 320, 512) at or below floor(r*L/n)."})
    lora_alpha: float | None = field(default=None, metadata={"help": "Alpha of the uniform baseline (default 2*rank)."})
    alpha_policy: str = field(default="ratio", metadata={"help": "'ratio': keep alpha/r (alpha/sqrt(r) with rsLoRA) equal to the baseline's; 'fixed': the same alpha for every rank, as in the paper."})
    use_rslora: bool = field(default=False, metadata={"help": "Use rank-stabilised LoRA scaling alpha/sqrt(r)."})
    target_modules: str | list[str] = field(default="attention", metadata={"help": "'attention' (the paper's q/k/v/o), 'mlp', 'all-linear', or an explicit list of module names."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (the paper used 0.05)."})
    train_final_norm: bool = field(default=False, metadata={"help": "full mode: also train the final norm."})
    train_embeddings: bool = field(default=False, metadata={"help": "full mode: also train the input embeddings (and a tied LM head)."})
    truncate_backward: bool = field(default=True, metadata={"help": "Skip backward work below the window under gradient checkpointing."})
    drift_monitor: bool = field(default=True, metadata={"help": "Log per-layer relative weight change and gradient norm at logging steps."})

    def __post_init__(self) -> None:
        check_one_window_form(**self.window_kwargs())
        if self.window is not None:
            _string("window", self.window, "e.g. '0.2:0.8'")
            parse_fraction_window(self.window)  # raises a WindowError naming the value
        if self.segments is not None:
            _string("segments", self.segments, "e.g. '01110' (quote it in YAML)")
            validate_mask(self.segments)
        if self.layers is not None:
            if isinstance(self.layers, bool) or not isinstance(self.layers, (str, int, list, tuple)):
                raise ValueError(f"layers={self.layers!r} must be a layer list such as '3-11', '3,4,9-12' or [3, 4, 5].")
            if isinstance(self.layers, (str, list, tuple)) and len(self.layers) == 0:
                raise WindowError(f"layers={self.layers!r} names no layer; use e.g. '3-11' or [3, 4, 5].")
        if self.window_from is not None:
            _string("window_from", self.window_from, "the path of an analysis.json written by 'midblock analyze'")
            read_window_file(self.window_from)  # exists and holds a recommendation
        _choice("mode", self.mode, MODES)
        _choice("budget", self.budget, BUDGETS)
        _choice("alpha_policy", self.alpha_policy, ALPHA_POLICIES)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank={self.rank!r} must be a positive integer (the uniform-LoRA rank r), e.g. 16.")
        if self.lora_alpha is not None and not (_number(self.lora_alpha) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha={self.lora_alpha!r} must be a positive finite number (default 2*rank), e.g. 32.")
        if not (_number(self.lora_dropout) and 0.0 <= self.lora_dropout < 1.0):
            raise ValueError(f"lora_dropout={self.lora_dropout!r} must be a number in [0, 1), e.g. 0.05.")
        for name in ("use_rslora", "train_final_norm", "train_embeddings", "truncate_backward", "drift_monitor"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name}={value!r} must be True or False (a bool, not {type(value).__name__}).")
        tm = self.target_modules
        if isinstance(tm, str):
            if tm not in TARGET_PRESETS:
                raise ValueError(
                    f"target_modules={tm!r} is not a preset; choose one of {', '.join(map(repr, TARGET_PRESETS))} "
                    "or give a list of module names such as ['q_proj', 'v_proj']."
                )
        elif not (isinstance(tm, (list, tuple)) and tm and all(isinstance(x, str) and x.strip() for x in tm)):
            raise ValueError(f"target_modules={tm!r} must be a preset name or a non-empty list of module names.")
        if self.mode == "lora" and (self.train_final_norm or self.train_embeddings):
            raise ValueError(
                "train_final_norm / train_embeddings apply to mode='full' only; set mode='full' or turn them off."
            )

    @property
    def base_alpha(self) -> float:
        return float(self.lora_alpha) if self.lora_alpha is not None else 2.0 * self.rank

    def window_kwargs(self) -> dict[str, Any]:
        """The window fields, for :func:`midblock_plugin.window.resolve_layers`."""
        return {"window": self.window, "segments": self.segments, "layers": self.layers, "window_from": self.window_from}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
