"""Axolotl YAML keys <-> :class:`~midblock_plugin.config.MidBlockConfig`: the mapping, and
every check of a raw Axolotl config dict.

The keys and what they do are documented in ONE table, ``docs/axolotl.md#keys``
(``tests/test_axolotl_keys.py`` checks it against :class:`~.args.MidBlockArgs` and this
module). The pydantic model (:mod:`.args`) calls :func:`validate_midblock_keys` and
:func:`normalize_eval_value`; the plugin (:mod:`.plugin`) calls
:func:`midblock_config_from_cfg` and :func:`eval_settings_from`.

This module needs the midblock core only (no Axolotl, no pydantic, no torch).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from typing import Any, Mapping

from midblock_plugin.config import MidBlockConfig
from midblock_plugin.window import WINDOW_FORMS, WindowError, check_one_window_form


#: The adapter name the plugin owns (``adapter: midblock``).
ADAPTER_NAME = "midblock"
KEY_PREFIX = "midblock_"

#: Axolotl's own keys that keep their meaning under ``adapter: midblock`` -> MidBlockConfig field.
AXOLOTL_KEYS: dict[str, str] = {
    "lora_r": "rank",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "peft_use_rslora": "use_rslora",
}
#: Axolotl's target-module keys; both set MidBlockConfig ``target_modules`` (a list / ``all-linear``).
AXOLOTL_TARGET_KEYS = ("lora_target_modules", "lora_target_linear")

#: YAML key -> MidBlockConfig field, for the plugin's own keys: ``midblock_<field>`` for every
#: field that no Axolotl key already sets (in the config's field order).
MIDBLOCK_KEYS: dict[str, str] = {
    KEY_PREFIX + f.name: f.name
    for f in dataclasses.fields(MidBlockConfig)
    if f.name not in AXOLOTL_KEYS.values()
}

#: The YAML spelling of each window form (``midblock_window``, ...), for the one-window rule.
WINDOW_KEYS: dict[str, str] = {form: KEY_PREFIX + form for form in WINDOW_FORMS}

#: Plugin keys that are not MidBlockConfig fields (and work with any adapter).
EVAL_KEY = "midblock_eval"
EXTRA_KEYS: tuple[str, ...] = (EVAL_KEY,)

#: YAML name of each MidBlockConfig field, used to rewrite the core's messages.
_FIELD_TO_KEY: dict[str, str] = {
    **{field: key for key, field in MIDBLOCK_KEYS.items()},
    **{field: key for key, field in AXOLOTL_KEYS.items()},
}

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
    for key, field_name in (*MIDBLOCK_KEYS.items(), *AXOLOTL_KEYS.items()):
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


# --------------------------------------------------------------------------- midblock_eval


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
            f"Allowed fields: {', '.join(eval_fields())}."
        )
    values = {str(k): v for k, v in value.items()}
    eval_settings_from(values)
    return values


def eval_fields() -> list[str]:
    """The fields of :class:`~midblock_plugin.evaluation.EvalSettings`: what ``midblock_eval`` accepts."""
    from midblock_plugin.evaluation.settings import EvalSettings

    return [f.name for f in dataclasses.fields(EvalSettings)]


def eval_settings_from(values: Mapping[str, Any] | None):
    """The :class:`~midblock_plugin.evaluation.EvalSettings` a ``midblock_eval`` mapping asks for.

    Unknown fields and bad values raise ``ValueError`` that names ``midblock_eval``, the bad
    field and (for unknown fields) the allowed ones. Cheap: imports neither torch nor lm-eval.
    """
    from midblock_plugin.evaluation.settings import EvalSettings

    values = dict(values or {})
    unknown = sorted(set(values) - set(eval_fields()))
    if unknown:
        raise ValueError(
            f"{EVAL_KEY}: unknown evaluation option {_did_you_mean(unknown, eval_fields())}; allowed fields: "
            f"{', '.join(eval_fields())}. Fix the spelling or remove the field."
        )
    try:
        return EvalSettings.from_dict(values)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        text = re.sub(r"(?<![\w.])(" + "|".join(eval_fields()) + r")=", r"\1: ", str(exc))
        raise ValueError(f"{EVAL_KEY}: {text}") from None


def _did_you_mean(unknown: list[str], known: list[str]) -> str:
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ", ".join(parts)


# --------------------------------------------------------------------------- checks


def validate_midblock_keys(data: Mapping[str, Any]) -> None:
    """All checks on the raw config dict; raises ``ValueError`` naming the key and the fix."""
    known = [*MIDBLOCK_KEYS, *EXTRA_KEYS]
    unknown = sorted(k for k in data if isinstance(k, str) and k.startswith(KEY_PREFIX) and k not in known)
    if unknown:
        raise ValueError(
            f"unknown midblock key {_did_you_mean(unknown, known)}; the mid-block plugin's keys are: "
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
    try:
        check_one_window_form(
            names=WINDOW_KEYS, **{form: data.get(key) if _given(data, key) else None for form, key in WINDOW_KEYS.items()}
        )
    except WindowError as exc:
        raise ValueError(f"adapter: midblock: {exc}") from None
    if _given(data, "midblock_target_modules"):
        other = next((k for k in AXOLOTL_TARGET_KEYS if _given(data, k)), None)
        if other:
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
        with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
            hf_config = json.load(fh)
        num_layers = num_layers_from_config(hf_config)
    except (OSError, ValueError):
        return
    try:
        resolve_layers(num_layers, **config.window_kwargs())
    except WindowError as exc:
        raise ValueError(f"adapter: midblock: {yaml_names(str(exc))} (base_model has {num_layers} layers)") from None
