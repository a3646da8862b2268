"""The Axolotl YAML keys of the mid-block plugin, as a pydantic model.

Axolotl merges this model into its own config schema (``get_input_args``), so the keys
are validated, with the messages below, when the config is loaded: before any model
weights are read. Every field maps to a :class:`midblock_plugin.config.MidBlockConfig`
field and reuses its help text; Axolotl's own LoRA keys keep their meaning:

==========================  ======================================================
YAML key                    ``MidBlockConfig`` field
==========================  ======================================================
``midblock_window``         ``window`` (``"0.2:0.8"``, the default)
``midblock_segments``       ``segments`` (``"01110"``)
``midblock_layers``         ``layers`` (``"3-11"`` or ``[3, 4, 5]``)
``midblock_window_from``    ``window_from`` (an ``analysis.json``)
``midblock_mode``           ``mode`` (``lora`` / ``full``)
``midblock_budget``         ``budget`` (``match`` / ``none``)
``midblock_alpha_policy``   ``alpha_policy`` (``ratio`` / ``fixed``)
``midblock_target_modules`` ``target_modules`` (``attention`` / ``mlp`` / ``all-linear`` / list)
``midblock_train_final_norm``, ``midblock_train_embeddings``, ``midblock_truncate_backward``,
``midblock_drift_monitor``: the fields of the same name
``lora_r``                  ``rank`` (the uniform-LoRA rank whose budget is matched)
``lora_alpha``              ``lora_alpha`` (the uniform baseline's alpha)
``lora_dropout``            ``lora_dropout`` (Axolotl's default, 0.0, applies)
``peft_use_rslora``         ``use_rslora``
``lora_target_modules``     ``target_modules`` (a list of module names)
``lora_target_linear``      ``target_modules: all-linear``
==========================  ======================================================

``midblock_eval`` is separate: a mapping of
:class:`midblock_plugin.evaluation.EvalSettings` fields (``{limit: 250, num_fewshot: 5,
data_dir: /data/gsm8k, baseline: true}``; ``true`` = all defaults; absent = off) for the
lm-eval GSM8K evaluation of the trained model, in memory, at the end of training. It is
the one ``midblock_*`` key that also works without ``adapter: midblock`` (to evaluate a
uniform-LoRA or full fine-tuning baseline the same way).

This module needs pydantic and the midblock core only (no Axolotl import).
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any, Mapping

from pydantic import BaseModel, Field, field_validator, model_validator

from midblock_plugin.config import MidBlockConfig
from midblock_plugin.window import WindowError

#: The adapter name the plugin owns (``adapter: midblock``).
ADAPTER_NAME = "midblock"
KEY_PREFIX = "midblock_"

#: YAML key -> MidBlockConfig field, for the plugin's own keys.
MIDBLOCK_KEYS: dict[str, str] = {
    "midblock_window": "window",
    "midblock_segments": "segments",
    "midblock_layers": "layers",
    "midblock_window_from": "window_from",
    "midblock_mode": "mode",
    "midblock_budget": "budget",
    "midblock_alpha_policy": "alpha_policy",
    "midblock_target_modules": "target_modules",
    "midblock_train_final_norm": "train_final_norm",
    "midblock_train_embeddings": "train_embeddings",
    "midblock_truncate_backward": "truncate_backward",
    "midblock_drift_monitor": "drift_monitor",
}

#: Axolotl's own keys that keep their meaning under ``adapter: midblock``.
AXOLOTL_KEYS: dict[str, str] = {
    "lora_r": "rank",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "peft_use_rslora": "use_rslora",
}

#: YAML name of each MidBlockConfig field, used to rewrite the core's messages.
_FIELD_TO_KEY: dict[str, str] = {
    **{field: key for key, field in MIDBLOCK_KEYS.items()},
    **{field: key for key, field in AXOLOTL_KEYS.items()},
}

#: Plugin keys that are not MidBlockConfig fields (and work with any adapter).
EVAL_KEY = "midblock_eval"
EXTRA_KEYS: tuple[str, ...] = (EVAL_KEY,)

_WINDOW_KEYS = ("midblock_window", "midblock_segments", "midblock_layers", "midblock_window_from")

#: Axolotl keys that contradict ``adapter: midblock``, with what to do instead.
CONFLICTING_KEYS: dict[str, str] = {
    "unfrozen_parameters": "midblock decides what is trained (the window's layers); choose them with midblock_window / midblock_segments / midblock_layers",
    "peft_layers_to_transform": "the window sets PEFT's layers_to_transform; put the layers in midblock_layers instead",
    "peft_layers_pattern": "the plugin finds the decoder layer stack itself",
    "lora_rank_pattern": "the rank budget sets the per-layer ranks; use lora_r and midblock_budget",
    "lora_alpha_pattern": "alpha follows midblock_alpha_policy; use lora_alpha and midblock_alpha_policy",
    "lora_modules_to_save": "modules_to_save would train modules outside the window",
    "lora_target_parameters": "only linear modules (lora_target_modules / midblock_target_modules) are supported",
    "peft_use_dora": "DoRA is not supported by adapter: midblock",
    "peft_layer_replication": "layer replication changes the layer count the window is computed on",
    "peft_trainable_token_indices": "trainable token rows lie outside the window",
    "lisa_n_layers": "LISA unfreezes random layers; midblock fixes the trained layers",
    "load_in_4bit": "quantized (QLoRA) bases are not supported by adapter: midblock; train in bf16/fp32",
    "load_in_8bit": "quantized bases are not supported by adapter: midblock; train in bf16/fp32",
    "gptq": "quantized bases are not supported by adapter: midblock",
    "relora": "ReLoRA restarts are not supported by adapter: midblock",
}


def _help(field_name: str, extra: str = "") -> str:
    text = MidBlockConfig.field_help()[field_name]
    return f"{text} {extra}".strip()


class MidBlockArgs(BaseModel):
    """Mid-Block Efficient Tuning (Zhao et al., ACL 2026): ``adapter: midblock``.

    Give at most one of ``midblock_window`` / ``midblock_segments`` / ``midblock_layers`` /
    ``midblock_window_from``; with none the paper's 20%-80% window is used.
    """

    midblock_window: str | None = Field(default=None, description=_help("window"))
    midblock_segments: str | None = Field(default=None, description=_help("segments"))
    midblock_layers: str | list[int] | None = Field(default=None, description=_help("layers"))
    midblock_window_from: str | None = Field(default=None, description=_help("window_from"))
    midblock_mode: str | None = Field(default=None, description=_help("mode", "Default 'lora'."))
    midblock_budget: str | None = Field(
        default=None, description=_help("budget", "r is Axolotl's lora_r. Default 'match'.")
    )
    midblock_alpha_policy: str | None = Field(
        default=None, description=_help("alpha_policy", "The baseline alpha is Axolotl's lora_alpha. Default 'ratio'.")
    )
    midblock_target_modules: str | list[str] | None = Field(
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
    midblock_eval: dict[str, Any] | bool | None = Field(
        default=None,
        description=(
            "lm-eval evaluation (GSM8K by default) of the trained model, in memory, after it is saved: "
            "a mapping of EvalSettings fields (tasks, num_fewshot, limit, batch_size, max_gen_toks, max_length, "
            "apply_chat_template, fewshot_as_multiturn, system_instruction, baseline, data_dir, output_subdir, "
            "save_samples, bootstrap_iters, enabled); true = the defaults; absent = off. Results go to "
            "<output_dir>/eval/<task>.json; a failed evaluation is recorded in <output_dir>/eval/error.json "
            "and never fails the training run. Works with any adapter."
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


# --------------------------------------------------------------------------- mapping


def is_midblock(cfg: Mapping[str, Any]) -> bool:
    return cfg.get("adapter") == ADAPTER_NAME


def _given(cfg: Mapping[str, Any], key: str) -> bool:
    value = cfg.get(key)
    return value is not None and value != "" and value != [] and value is not False


def midblock_config_from_cfg(cfg: Mapping[str, Any]) -> MidBlockConfig:
    """The :class:`MidBlockConfig` that an Axolotl config (raw dict or ``DictDefault``) asks for.

    Raises ``ValueError`` whose message names the YAML keys.
    """
    kwargs: dict[str, Any] = {}
    for key, field_name in MIDBLOCK_KEYS.items():
        if cfg.get(key) is not None:
            kwargs[field_name] = cfg.get(key)
    for key, field_name in AXOLOTL_KEYS.items():
        if cfg.get(key) is not None:
            kwargs[field_name] = cfg.get(key)
    if "lora_dropout" not in kwargs:
        kwargs["lora_dropout"] = 0.0  # Axolotl's default for every adapter
    if "target_modules" not in kwargs:
        if cfg.get("lora_target_linear"):
            kwargs["target_modules"] = "all-linear"
        elif _given(cfg, "lora_target_modules"):
            tm = cfg.get("lora_target_modules")
            kwargs["target_modules"] = [tm] if isinstance(tm, str) else list(tm)
    if isinstance(kwargs.get("layers"), tuple):
        kwargs["layers"] = list(kwargs["layers"])
    try:
        return MidBlockConfig(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"adapter: midblock: {yaml_names(str(exc))}") from None


def yaml_names(message: str) -> str:
    """Rewrite the core's ``field=value`` mentions as the YAML ``key: value`` users wrote."""

    def repl(m: re.Match) -> str:
        return f"{_FIELD_TO_KEY[m.group(1)]}: "

    names = "|".join(sorted(_FIELD_TO_KEY, key=len, reverse=True))
    return re.sub(rf"(?<![\w.])({names})=", repl, message)


def normalize_eval_value(value: Any) -> dict[str, Any] | None:
    """``midblock_eval`` as a plain dict of EvalSettings fields (``None`` = off), validated
    with :meth:`EvalSettings.from_dict`; raises ``ValueError`` naming the key and the fields."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise ValueError(
            f"{EVAL_KEY}: expected a mapping of evaluation settings (e.g. {{limit: 250, num_fewshot: 5, "
            f"data_dir: /data/gsm8k}}) or true for the defaults, got {type(value).__name__} {value!r}. "
            f"Allowed fields: {', '.join(_eval_fields())}."
        )
    values = {str(k): v for k, v in value.items()}
    eval_settings_from(values)
    return values


def _eval_fields() -> list[str]:
    import dataclasses

    from midblock_plugin.evaluation.settings import EvalSettings

    return [f.name for f in dataclasses.fields(EvalSettings)]


def eval_settings_from(values: Mapping[str, Any] | None):
    """The :class:`~midblock_plugin.evaluation.EvalSettings` a ``midblock_eval`` mapping asks for.

    Unknown fields and bad values raise ``ValueError`` that names ``midblock_eval``, the bad
    field and (for unknown fields) the allowed ones. Cheap: imports neither torch nor lm-eval.
    """
    from midblock_plugin.evaluation.settings import EvalSettings

    values = dict(values or {})
    unknown = sorted(set(values) - set(_eval_fields()))
    if unknown:
        parts = []
        for key in unknown:
            close = difflib.get_close_matches(key, _eval_fields(), n=1)
            parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"{EVAL_KEY}: unknown evaluation option {', '.join(parts)}; allowed fields: "
            f"{', '.join(_eval_fields())}. Fix the spelling or remove the field."
        )
    try:
        return EvalSettings.from_dict(values)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        text = re.sub(r"(?<![\w.])(" + "|".join(_eval_fields()) + r")=", r"\1: ", str(exc))
        raise ValueError(f"{EVAL_KEY}: {text}") from None


def validate_midblock_keys(data: Mapping[str, Any]) -> None:
    """All checks on the raw config dict; raises ``ValueError`` naming the key and the fix."""
    known = [*MIDBLOCK_KEYS, *EXTRA_KEYS]
    unknown = sorted(k for k in data if isinstance(k, str) and k.startswith(KEY_PREFIX) and k not in known)
    if unknown:
        parts = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"unknown midblock key {', '.join(parts)}; the mid-block plugin's keys are: "
            f"{', '.join(known)}. Fix the spelling or remove the key."
        )
    ours = [k for k in MIDBLOCK_KEYS if data.get(k) is not None]
    if not is_midblock(data):
        if ours:
            raise ValueError(
                f"{', '.join(ours)} only take effect with adapter: midblock (the config has "
                f"adapter: {data.get('adapter')!r}). Set adapter: midblock, or remove the midblock_* keys."
            )
        return

    conflicts = [k for k in CONFLICTING_KEYS if _given(data, k)]
    if conflicts:
        lines = "; ".join(f"{k} ({CONFLICTING_KEYS[k]})" for k in conflicts)
        raise ValueError(
            f"adapter: midblock cannot be combined with {', '.join(conflicts)}: remove "
            f"{'it' if len(conflicts) == 1 else 'them'} from the config. Why: {lines}."
        )
    windows = [k for k in _WINDOW_KEYS if _given(data, k)]
    if len(windows) > 1:
        raise ValueError(
            f"adapter: midblock: give only one of {' / '.join(_WINDOW_KEYS)} (got {', '.join(windows)}); "
            "remove all but one."
        )
    if _given(data, "midblock_target_modules") and (
        _given(data, "lora_target_modules") or _given(data, "lora_target_linear")
    ):
        other = "lora_target_modules" if _given(data, "lora_target_modules") else "lora_target_linear"
        raise ValueError(
            f"adapter: midblock: the target modules are given twice (midblock_target_modules and {other}); "
            f"remove one of them."
        )
    config = midblock_config_from_cfg(data)
    if config.mode == "full":
        if _given(data, "lora_model_dir"):
            raise ValueError(
                "adapter: midblock with midblock_mode: full trains the base weights, so there is no adapter "
                "to load from lora_model_dir: remove lora_model_dir (to continue training a full-mode result, "
                "set base_model to its output_dir)."
            )
        if data.get("merge_lora"):
            raise ValueError(
                "midblock_mode: full saves a full model in output_dir; there is no LoRA adapter to merge. "
                "Use output_dir as the model directly instead of running merge_lora."
            )
    _check_window_fits_model(data, config)


def _check_window_fits_model(data: Mapping[str, Any], config: MidBlockConfig) -> None:
    """If the base model is a local directory, resolve the window against its layer count
    now, so an out-of-range window fails at config validation rather than after loading."""
    path = data.get("base_model_config") or data.get("base_model")
    if not isinstance(path, str) or not os.path.isfile(os.path.join(path, "config.json")):
        return  # a hub id: checked in pre_model_load, still before the weights are read
    from midblock_plugin.architecture import num_layers_from_config
    from midblock_plugin.window import resolve_layers

    try:
        import json

        with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
            hf_config = json.load(fh)
        num_layers = num_layers_from_config(hf_config)
    except (OSError, ValueError):
        return
    try:
        resolve_layers(num_layers, **config.window_kwargs())
    except WindowError as exc:
        raise ValueError(f"adapter: midblock: {yaml_names(str(exc))} (base_model has {num_layers} layers)") from None
