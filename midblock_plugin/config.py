"""``MidBlockConfig``: what the user asks for (window, mode, rank budget, alpha policy).

The config is validated on construction, before any model is loaded: every value, and each
window form parsed as written (a fraction window, a segment mask, a layer list such as
``'3,4,9-12'``; :func:`midblock_plugin.rules.check_window_forms`). Only what needs the model
waits for it: whether the layers exist and a mask has no more segments than the model has
layers. Turning it into concrete layers and ranks for a given model is
:mod:`midblock_plugin.plan`'s job.

>>> cfg = MidBlockConfig(segments="01110", rank=64, lora_alpha=128, alpha_policy="fixed")
>>> cfg.mode
'lora'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from midblock_plugin import rules
from midblock_plugin.choices import AlphaPolicy, Budget, Mode, TargetPreset, values
from midblock_plugin.serving import VLLM_MAX_LORA_RANKS


#: The allowed values of the closed choices (declared once, as ``Literal`` types, in :mod:`midblock_plugin.choices`).
MODES = values(Mode)
BUDGETS = values(Budget)
ALPHA_POLICIES = values(AlphaPolicy)
TARGET_PRESETS = values(TargetPreset)
#: The bool fields (each checked by :func:`midblock_plugin.rules.check_bool`).
BOOL_FIELDS = ("use_rslora", "train_final_norm", "train_embeddings", "truncate_backward", "drift_monitor")


def target_list(text: Any) -> Any:
    """The command line's ``--target-modules``: a preset name as it is, else a comma-separated list."""
    if isinstance(text, str) and ("," in text or text not in TARGET_PRESETS):
        return [t.strip() for t in text.split(",") if t.strip()]
    return text


@dataclass
class MidBlockConfig:
    """Mid-Block Efficient Tuning settings (Zhao et al., ACL 2026, arXiv 2604.11838).

    Give at most one of ``window``, ``segments``, ``layers``, ``window_from``; with none
    the paper's 20%-80% window (``"0.2:0.8"``) is used.
    """

    window: Optional[str] = field(
        default=None, metadata={"help": "Fraction window 'a:b' = layers [floor(a*L), floor(b*L)). Default '0.2:0.8'."}
    )
    segments: Optional[str] = field(
        default=None,
        metadata={"help": "The paper's segment mask, bottom first, e.g. '01110' (5 segments, middle three active)."},
    )
    layers: str | list[int] | None = field(
        default=None,
        metadata={"help": "Explicit layers: '3-11', '3,4,9-12' or a list; negative indices count from the top."},
    )
    window_from: Optional[str] = field(
        default=None,
        metadata={"help": "Path of an analysis.json written by 'midblock analyze'; its recommended layers are used."},
    )
    mode: Mode = field(
        default="lora",
        metadata={
            "help": "'lora' (the paper's method: LoRA on the window's layers) or 'full' (full-parameter updates of the window's layers)."
        },
    )
    rank: int = field(default=16, metadata={"help": "Rank r of the uniform-LoRA baseline the budget is matched to."})
    budget: Budget = field(
        default="match",
        metadata={
            "help": "'match': active layers get rank floor(r*L/n) so the rank sum equals uniform LoRA at rank r; 'none': active layers get rank r; 'serve': the largest rank vLLM serves (its --max-lora-rank sizes "
            + ", ".join(map(str, VLLM_MAX_LORA_RANKS))
            + ") at or below floor(r*L/n)."
        },
    )
    lora_alpha: Optional[float] = field(
        default=None, metadata={"help": "Alpha of the uniform baseline (default 2*rank)."}
    )
    alpha_policy: AlphaPolicy = field(
        default="ratio",
        metadata={
            "help": "'ratio': keep alpha/r (alpha/sqrt(r) with rsLoRA) equal to the baseline's; 'fixed': the same alpha for every rank, as in the paper."
        },
    )
    use_rslora: bool = field(default=False, metadata={"help": "Use rank-stabilised LoRA scaling alpha/sqrt(r)."})
    target_modules: str | list[str] = field(
        default="attention",
        metadata={
            "help": "'attention' (the paper's q/k/v/o), 'mlp', 'all-linear', or an explicit list of module names.",
            "parse": target_list,
        },
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (the paper used 0.05)."})
    train_final_norm: bool = field(default=False, metadata={"help": "full mode: also train the final norm."})
    train_embeddings: bool = field(
        default=False, metadata={"help": "full mode: also train the input embeddings (and a tied LM head)."}
    )
    truncate_backward: bool = field(
        default=True, metadata={"help": "Skip backward work below the window under gradient checkpointing."}
    )
    drift_monitor: bool = field(
        default=True, metadata={"help": "Log per-layer relative weight change and gradient norm at logging steps."}
    )

    def __post_init__(self) -> None:
        rules.check_window_forms(**self.window_kwargs())
        rules.check_choice("mode", self.mode, Mode)
        rules.check_choice("budget", self.budget, Budget)
        rules.check_choice("alpha_policy", self.alpha_policy, AlphaPolicy)
        rules.check_rank(self.rank)
        rules.check_alpha(self.lora_alpha)
        rules.check_dropout(self.lora_dropout)
        for name in BOOL_FIELDS:
            rules.check_bool(getattr(self, name), name)
        tm = self.target_modules
        if isinstance(tm, str):
            if tm not in TARGET_PRESETS:
                raise rules.OptionError(
                    "target_modules",
                    tm,
                    f"is not a preset; choose one of {', '.join(map(repr, TARGET_PRESETS))} "
                    "or give a list of module names such as ['q_proj', 'v_proj']",
                )
        elif not (isinstance(tm, (list, tuple)) and tm and all(isinstance(x, str) and x.strip() for x in tm)):
            raise rules.OptionError("target_modules", tm, "must be a preset name or a non-empty list of module names")
        if self.mode == "lora" and (self.train_final_norm or self.train_embeddings):
            name = "train_final_norm" if self.train_final_norm else "train_embeddings"
            raise rules.OptionError(
                name,
                True,
                "(train_final_norm / train_embeddings) apply to {mode} only; set {mode} or turn them off",
                refs={"mode": ("mode", "full")},
            )

    @property
    def base_alpha(self) -> float:
        return float(self.lora_alpha) if self.lora_alpha is not None else 2.0 * self.rank

    def window_kwargs(self) -> dict[str, Any]:
        """The window fields, for :func:`midblock_plugin.window.resolve_layers`."""
        return {
            "window": self.window,
            "segments": self.segments,
            "layers": self.layers,
            "window_from": self.window_from,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
