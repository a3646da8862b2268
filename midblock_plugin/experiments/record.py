"""The typed per-seed record of a sweep and the table of its paired metrics.

:class:`SeedRecord` is what :mod:`.train` measures for one variant, one seed and one learning
rate; :mod:`.summary` turns a list of them into the ``variants`` of ``results.json`` and
:mod:`.report` prints them. No untyped dict crosses those modules.

:data:`METRICS` lists the per-row metrics that are compared with uniform LoRA: each names the
:class:`SeedRecord` attribute holding its per-row values (one value per held-out row or per
general-text block, the same rows for every variant and seed), the token counts that weight
the rows (``None``: every row weighs 1), where the summary puts it in a variant's entry and
how the report prints it. :mod:`.summary` and :mod:`.report` iterate over the table, so a new
sweep metric is one field here plus its entry in :data:`METRICS` (this file) and its
measurement in :mod:`.train`: two shipped files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class Metric:
    """One paired per-row metric of a sweep (lower is better for all of them)."""

    #: Key of the metric in a variant's entry (``heldout_loss``) or in its ``group`` (``kl``).
    name: str
    #: :class:`SeedRecord` attribute holding the per-row values (a list per seed; ``None`` = not measured).
    rows: str
    #: :class:`SeedRecord` attribute holding per-row token counts (a token-weighted mean), ``None`` = rows weigh 1.
    tokens: Optional[str]
    #: ``None``: at the top of a variant's entry; else the name of the sub-entry (``forgetting``).
    group: Optional[str]
    #: Key of the paired comparison with uniform (``vs_uniform`` / ``kl_vs_uniform``).
    vs_uniform: str
    #: Words of the report.
    label: str
    digits: int = 4


#: The paired metrics of a sweep, in report order.
METRICS: tuple[Metric, ...] = (
    Metric("heldout_loss", "heldout_row_loss", "heldout_row_tokens", None, "vs_uniform", "held-out answer loss", 4),
    Metric(
        "delta_loss",
        "general_delta_loss",
        None,
        "forgetting",
        "delta_loss_vs_uniform",
        "change in general-text loss",
        5,
    ),
    Metric("kl", "general_kl", None, "forgetting", "kl_vs_uniform", "KL(base || tuned) on general text", 5),
)


@dataclass
class SeedRecord:
    """Everything measured for one variant trained with one seed at one learning rate.

    Per-row lists are in the order of the held-out rows (``heldout_*``), the validation rows
    (``validation_*``) and the general-text blocks (``general_*``), the same for every record
    of a sweep, so records pair row by row."""

    variant: str = field(metadata={"help": "the segment mask, or 'recommended' (the layers of --window-from)"})
    seed: int = field(metadata={"help": "the training seed"})
    lr: float = field(metadata={"help": "the learning rate"})
    layers: list = field(default_factory=list, metadata={"help": "the trained decoder layers"})
    window: str = field(default="", metadata={"help": "the layers as text, e.g. '6-23'"})
    rank: int = field(default=0, metadata={"help": "the per-layer LoRA rank"})
    lora_alpha: float = field(default=0.0, metadata={"help": "the per-layer LoRA alpha"})
    trainable_params: int = field(default=0, metadata={"help": "trainable parameters"})
    uniform_lora_params: int = field(default=0, metadata={"help": "parameters of uniform LoRA at the budget"})
    steps: int = field(default=0, metadata={"help": "optimizer steps taken"})
    step_time_s: Optional[float] = field(default=None, metadata={"help": "median training step time"})
    peak_memory_bytes: int = field(default=0, metadata={"help": "peak memory during training"})
    peak_memory_kind: str = field(default="", metadata={"help": "cuda_max_allocated or process_rss"})
    loss_curve: list = field(default_factory=list, metadata={"help": "(step, training loss) pairs"})
    drift: dict = field(default_factory=dict, metadata={"help": "per-layer relative weight change at the end"})
    adapter_dir: str = field(default="", metadata={"help": "the saved adapter"})
    base_dir: str = field(default="", metadata={"help": "the base model directory"})
    heldout_row_loss: list = field(
        default_factory=list, metadata={"help": "summed answer-token loss per held-out test row"}
    )
    heldout_row_tokens: list = field(default_factory=list, metadata={"help": "answer tokens per held-out test row"})
    validation_row_loss: Optional[list] = field(
        default=None,
        metadata={
            "help": "summed answer-token loss per validation row (GSM8K training rows no variant trains on); None: not measured"
        },
    )
    validation_row_tokens: Optional[list] = field(default=None, metadata={"help": "answer tokens per validation row"})
    general_delta_loss: Optional[list] = field(
        default=None,
        metadata={"help": "per general-text block: tuned minus base mean token loss; None: no forgetting measure"},
    )
    general_kl: Optional[list] = field(
        default=None, metadata={"help": "per general-text block: mean KL(base || tuned)"}
    )
    eval: Optional[dict] = field(
        default=None, metadata={"help": "GSM8K summary (train.gsm8k_summary); None: not evaluated"}
    )
    gsm8k_correct: Optional[dict] = field(
        default=None,
        metadata={
            "help": "per GSM8K filter: 0/1 per question, in question order (for the paired test against uniform)"
        },
    )

    @property
    def heldout_loss(self) -> float:
        """Token-weighted mean held-out answer loss."""
        return sum(self.heldout_row_loss) / max(sum(self.heldout_row_tokens), 1)

    @property
    def validation_loss(self) -> Optional[float]:
        """Token-weighted mean validation answer loss (``None`` when not measured)."""
        if self.validation_row_loss is None:
            return None
        return sum(self.validation_row_loss) / max(sum(self.validation_row_tokens or []), 1)

    def mean(self, attr: str) -> Optional[float]:
        """Mean of a per-block list (``general_kl`` ...), ``None`` when not measured."""
        values = getattr(self, attr)
        return None if values is None else sum(values) / max(len(values), 1)

    def rows(self, metric: Metric) -> Optional[list]:
        """The per-row values of ``metric`` (``None`` when not measured)."""
        return getattr(self, metric.rows)

    def to_dict(self) -> dict[str, Any]:
        """The record as ``record.json`` / ``results.json`` hold it (with the derived means)."""
        out = dataclasses.asdict(self)
        out["heldout_loss"] = self.heldout_loss
        out["validation_loss"] = self.validation_loss
        out["general_kl_mean"] = self.mean("general_kl")
        out["general_delta_loss_mean"] = self.mean("general_delta_loss")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SeedRecord":
        """The record of a :meth:`to_dict` mapping (derived keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
