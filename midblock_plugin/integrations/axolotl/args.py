"""The Axolotl YAML keys of the mid-block plugin, as a pydantic model (``MidBlockArgs``).

Axolotl merges this model into its own config schema (``get_input_args``), so the keys
are validated, by :mod:`.validate`, when the config is loaded: before any model weights are
read. Each ``midblock_<field>`` key is the :class:`midblock_plugin.config.MidBlockConfig`
field of that name and reuses its help text; ``midblock_eval`` is a mapping of
:class:`~midblock_plugin.evaluation.EvalSettings` fields (:data:`MidBlockEvalArgs`, with their
help text). Closed choices are the ``Literal`` types of :mod:`midblock_plugin.choices`. The
table of every key is in ``docs/axolotl.md#keys``; the mapping to the fields is :mod:`.keys`.

This module needs pydantic and the midblock core only (no Axolotl import).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Mapping, get_type_hints

from pydantic import BaseModel, Field, field_validator, model_validator
from typing_extensions import TypedDict  # pydantic needs typing_extensions' TypedDict before Python 3.12

from midblock_plugin.choices import AlphaPolicy, Backend, Budget, Mode, PartitionedMode, Protocol, TargetPreset
from midblock_plugin.config import MidBlockConfig
from midblock_plugin.evaluation.settings import EvalSettings
from midblock_plugin.integrations.axolotl.keys import EVAL_KEY, eval_fields
from midblock_plugin.integrations.axolotl.validate import normalize_eval_value, validate_midblock_keys


def _help(field_name: str, extra: str = "") -> str:
    text = MidBlockConfig.field_help()[field_name]
    return f"{text} {extra}".strip()


#: The closed choices among the EvalSettings fields.
_EVAL_CHOICES = {"protocol": Protocol, "backend": Backend, "partitioned_mode": PartitionedMode}
_EVAL_TYPES = get_type_hints(EvalSettings)

#: ``midblock_eval``'s mapping: every EvalSettings field (all optional), typed and described by the field.
MidBlockEvalArgs = TypedDict(
    "MidBlockEvalArgs",
    {
        f.name: Annotated[
            _EVAL_CHOICES.get(f.name, _EVAL_TYPES[f.name]), Field(description=f.metadata.get("help", ""))
        ]
        for f in dataclasses.fields(EvalSettings)
    },
    total=False,
)


class MidBlockArgs(BaseModel):
    """Mid-Block Efficient Tuning (Zhao et al., ACL 2026): ``adapter: midblock``.

    Give at most one of ``midblock_window`` / ``midblock_segments`` / ``midblock_layers`` /
    ``midblock_window_from``; with none the paper's 20%-80% window is used.
    """

    midblock_window: str | None = Field(default=None, description=_help("window"))
    midblock_segments: str | None = Field(default=None, description=_help("segments"))
    midblock_layers: str | list[int] | None = Field(default=None, description=_help("layers"))
    midblock_window_from: str | None = Field(default=None, description=_help("window_from"))
    midblock_mode: Mode | None = Field(default=None, description=_help("mode", "Default 'lora'."))
    midblock_budget: Budget | None = Field(
        default=None, description=_help("budget", "r is Axolotl's lora_r. Default 'match'.")
    )
    midblock_alpha_policy: AlphaPolicy | None = Field(
        default=None, description=_help("alpha_policy", "The baseline alpha is Axolotl's lora_alpha. Default 'ratio'.")
    )
    midblock_target_modules: TargetPreset | list[str] | None = Field(
        default=None,
        description=_help(
            "target_modules",
            "Default: lora_target_modules if given, 'all-linear' if lora_target_linear is true, else 'attention'.",
        ),
    )
    midblock_train_final_norm: bool | None = Field(default=None, description=_help("train_final_norm"))
    midblock_train_embeddings: bool | None = Field(default=None, description=_help("train_embeddings"))
    midblock_truncate_backward: bool | None = Field(default=None, description=_help("truncate_backward"))
    midblock_drift_monitor: bool | None = Field(default=None, description=_help("drift_monitor"))
    midblock_eval: MidBlockEvalArgs | bool | None = Field(
        default=None,
        description=(
            "lm-eval evaluation (GSM8K by default) of the trained model, in memory, after it is saved: "
            f"a mapping of EvalSettings fields ({', '.join(eval_fields())}); true = the defaults; absent = off. Results go to "
            "<output_dir>/eval/<task>.json; a failed evaluation is recorded in <output_dir>/eval/error.json "
            "and never fails the training run. Works with any adapter. backend: hf | vllm evaluates the saved model in its "
            "own process started by rank 0 after the save (midblock eval --backend ...); protocol: paper is the paper's "
            "zero-shot, 64-token, last-number GSM8K protocol."
        ),
    )

    midblock_overwrite: bool | None = Field(
        default=None,
        description=(
            "true: a previous midblock run in output_dir trained with another window, rank or mode is replaced "
            "(its checkpoints, adapter or model, midblock/ and eval/ are removed when training starts) instead of "
            "refused. A resume, or a run with the same plan, never needs it. Default false."
        ),
    )

    @field_validator(EVAL_KEY, mode="before")
    @classmethod
    def check_eval_settings(cls, value: Any) -> Any:
        return normalize_eval_value(value)

    @model_validator(mode="before")
    @classmethod
    def check_midblock_config(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            validate_midblock_keys(data)
        return data
