"""The options of ``midblock run`` / ``midblock compare`` and the presets that fill them in.

Presets: ``cpu`` (a demo that finishes in minutes on a laptop) and ``paper`` (the paper's
recipe sizes: bf16, batch 4 x grad-accum 8, 2,000 examples, 1 epoch, 128 tokens);
``auto`` picks ``paper`` when a CUDA GPU is present.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from midblock_plugin.cli.options import DEFAULT_SEGMENTS
from midblock_plugin.config import MidBlockConfig
from midblock_plugin.models import DEFAULT_MODEL


PRESETS = {
    # examples, steps (-1 = one epoch), batch, grad-accum, lr, eval limit, held-out rows, analysis prompts
    "cpu": dict(num_examples=64, max_steps=16, batch_size=4, grad_accum=1, lr=5e-4, eval_limit=10, heldout=32, analysis_prompts=32, bf16=False),
    "paper": dict(num_examples=2000, max_steps=-1, batch_size=4, grad_accum=8, lr=1e-4, eval_limit=None, heldout=200, analysis_prompts=200, bf16=True),
}
#: The windows ``midblock compare`` trains by default: uniform, the mid block, and two single segments.
DEFAULT_VARIANTS = ("11111", "01110", "01000", "00001")


@dataclass
class JobOptions:
    """Options of ``midblock run`` / ``midblock compare`` (``None`` = from the preset)."""

    output_dir: str
    model: str = DEFAULT_MODEL
    data_dir: Optional[str] = None
    preset: str = "auto"
    segments: Optional[str] = DEFAULT_SEGMENTS
    rank: int = 16
    lora_alpha: Optional[float] = None
    alpha_policy: str = "ratio"
    num_examples: Optional[int] = None
    max_steps: Optional[int] = None
    batch_size: Optional[int] = None
    grad_accum: Optional[int] = None
    lr: Optional[float] = None
    max_length: int = 128
    seed: int = 42
    eval_limit: Optional[int] = None
    num_fewshot: Optional[int] = None
    max_gen_toks: int = 64
    eval_batch_size: int = 8
    heldout: Optional[int] = None
    analysis_prompts: Optional[int] = None
    bf16: Optional[bool] = None
    skip_eval: bool = False
    skip_analysis: bool = False
    variants: tuple = DEFAULT_VARIANTS

    def resolved(self) -> "JobOptions":
        """A copy with the preset chosen (``auto`` -> ``paper`` / ``cpu``) and every ``None`` filled from it."""
        preset = self.preset
        if preset == "auto":
            import torch

            preset = "paper" if torch.cuda.is_available() else "cpu"
        if preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r} is not one of auto, {', '.join(PRESETS)}.")
        values = {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in PRESETS[preset].items()}
        return replace(self, preset=preset, **values)

    def midblock_config(self, segments: Optional[str] = None) -> MidBlockConfig:
        """The :class:`MidBlockConfig` of one variant (``segments``, default this job's mask); validated."""
        return MidBlockConfig(segments=segments or self.segments, rank=self.rank, lora_alpha=self.lora_alpha,
                              alpha_policy=self.alpha_policy)

    def eval_settings(self):
        """The lm-eval settings of this job (validated on construction)."""
        from midblock_plugin.evaluation import EvalSettings

        return EvalSettings(limit=self.eval_limit, num_fewshot=self.num_fewshot, max_gen_toks=self.max_gen_toks,
                            batch_size=self.eval_batch_size, data_dir=self.data_dir)
