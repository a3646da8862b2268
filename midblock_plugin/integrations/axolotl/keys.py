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
import math
import os
import re
from typing import Any, Mapping

from midblock_plugin.config import ALPHA_POLICIES, BUDGETS, MODES, MidBlockConfig
from midblock_plugin.window import WINDOW_FORMS, WindowError, check_one_window_form, explicit_layers


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
    "gptq": "GPTQ bases are not supported by adapter: midblock; for QLoRA use load_in_4bit: true (or load_in_8bit: true)",
    "relora": "ReLoRA restarts are not supported by adapter: midblock",
}

#: Axolotl's bitsandbytes keys: LoRA mode on a quantized base (QLoRA); the plugin builds the
#: quantization config Axolotl builds for ``adapter: qlora`` / ``adapter: lora``.
QUANTIZATION_KEYS = ("load_in_4bit", "load_in_8bit")

#: ``midblock_<field>`` spellings of the fields that Axolotl's own keys set (``midblock_rank``
#: is ``lora_r``), plus short forms: an unknown key that resembles one gets that Axolotl key suggested.
AXOLOTL_ALIASES: dict[str, str] = {
    **{KEY_PREFIX + field: key for key, field in AXOLOTL_KEYS.items()},
    **{KEY_PREFIX + short: key for key, short in (("lora_r", "r"), ("lora_r", "lora_r"), ("lora_alpha", "alpha"),
                                                  ("lora_dropout", "dropout"), ("peft_use_rslora", "rslora"))},
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


#: MidBlockConfig fields that decide the plan a checkpoint was trained with (not dropout, logging, truncation).
PLAN_FIELDS: tuple[str, ...] = (
    *WINDOW_FORMS, "mode", "rank", "budget", "lora_alpha", "alpha_policy", "use_rslora", "target_modules",
    "train_final_norm", "train_embeddings",
)


def settings_diff(saved: Mapping[str, Any], config: MidBlockConfig) -> list[str]:
    """The YAML settings of a saved ``MidBlockConfig`` (``plan.json``'s ``midblock_config``) that
    differ from ``config``, as ``"midblock_segments: '01110' (this config: not set)"``."""
    now = config.to_dict()
    out = []
    for field in PLAN_FIELDS:
        if field not in saved:
            continue
        old, new = saved[field], now.get(field)
        if _plain(old) == _plain(new):
            continue
        key = "lora_target_modules (or midblock_target_modules)" if field == "target_modules" else _FIELD_TO_KEY[field]
        out.append(f"{key}: {_shown(old)} (this config: {_shown(new)})")
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _shown(value: Any) -> str:
    return "not set" if value is None or value == "" else _yaml(value)


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
    settings = eval_settings_from(values)
    if settings.enabled and settings.backend == "vllm":  # a missing vLLM fails with the config, not after training
        from midblock_plugin.evaluation.saved import check_backend

        try:
            check_backend(settings.backend, settings)
        except ImportError as exc:
            raise ValueError(f"{EVAL_KEY}: backend: vllm: {exc}") from None
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


def _did_you_mean(unknown: list[str], known: list[str], aliases: Mapping[str, str] | None = None) -> str:
    """``'key' (did you mean 'closest'?)`` for each unknown key; ``aliases`` maps other spellings
    (``midblock_rank``) to the key they stand for (``lora_r``)."""
    aliases = aliases or {}
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, [*known, *aliases], n=1)
        parts.append(f"{key!r}" + (f" (did you mean {aliases.get(close[0], close[0])!r}?)" if close else ""))
    return ", ".join(parts)


# --------------------------------------------------------------------------- checks


def validate_midblock_keys(data: Mapping[str, Any]) -> None:
    """All checks on the raw config dict; raises ``ValueError`` naming the key and the fix."""
    known = [*MIDBLOCK_KEYS, *EXTRA_KEYS]
    unknown = sorted(k for k in data if isinstance(k, str) and k.startswith(KEY_PREFIX) and k not in known)
    if unknown:
        raise ValueError(
            f"unknown midblock key {_did_you_mean(unknown, known, AXOLOTL_ALIASES)}; the mid-block plugin's keys "
            f"are: {', '.join(known)} (the rank, alpha, dropout and rsLoRA are Axolotl's own "
            f"{', '.join(AXOLOTL_KEYS)}). Fix the spelling or remove the key."
        )
    ours = [k for k in MIDBLOCK_KEYS if data.get(k) is not None]
    if not is_midblock(data):
        if ours:
            raise ValueError(
                f"{', '.join(ours)} only take effect with adapter: midblock (the config has "
                f"adapter: {data.get('adapter')!r}). Set adapter: midblock, or remove the midblock_* keys."
            )
        return

    check_yaml_values(data)
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
    quantized = [k for k in QUANTIZATION_KEYS if data.get(k) is True]
    if len(quantized) > 1:
        raise ValueError("adapter: midblock: load_in_4bit and load_in_8bit are both true; keep one of them "
                         "(load_in_4bit: true is QLoRA's 4-bit NF4 base).")
    if config.mode == "full":
        if quantized:
            raise ValueError(
                f"adapter: midblock with midblock_mode: full trains the base weights of the window's layers, which "
                f"{quantized[0]}: true would quantize (quantized weights cannot be trained). Remove {quantized[0]} to "
                "train the layers in bf16/fp32, or set midblock_mode: lora for QLoRA (a LoRA adapter on the window "
                "over the quantized base)."
            )
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


def bnb_quantization_config(data: Mapping[str, Any], bf16_available: bool = False) -> dict[str, Any] | None:
    """The bitsandbytes quantization config (a plain ``BitsAndBytesConfig`` dict) that
    ``load_in_4bit`` / ``load_in_8bit`` ask for under ``adapter: midblock``, or ``None``.

    The same settings Axolotl 0.19 builds for ``adapter: qlora`` (NF4, double quantization,
    compute in the training dtype, ``bnb_4bit_quant_storage`` bf16 so ZeRO-3 / FSDP can shard
    it) and ``adapter: lora`` + ``load_in_8bit`` (``axolotl/loaders/model.py``,
    ``ModelLoader._set_quantization_config``), with ``bnb_config_kwargs`` on top for 4-bit.
    ``bf16_available``: whether ``bf16: auto`` would find bf16 (a CUDA device that has it).
    """
    if not is_midblock(data) or str(data.get("midblock_mode") or "lora") != "lora":
        return None
    if data.get("load_in_8bit") is True and data.get("load_in_4bit") is not True:
        return {"load_in_8bit": True}
    if data.get("load_in_4bit") is not True:
        return None
    config = {
        "load_in_4bit": True,
        "llm_int8_threshold": 6.0,
        "llm_int8_has_fp16_weight": False,
        "bnb_4bit_compute_dtype": training_dtype(data, bf16_available),
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_quant_storage": "bfloat16",
    }
    extra = data.get("bnb_config_kwargs")
    if isinstance(extra, Mapping):
        config.update(extra)
    return config


def training_dtype(data: Mapping[str, Any], bf16_available: bool) -> str:
    """The dtype Axolotl will train in, as a torch dtype name, read from the raw config the way
    its ``resolve_dtype`` / ``normalize_config`` decide it: ``bf16: auto`` is bf16 where the GPU
    has it (``bf16_available``) and otherwise fp16 unless ``fp16`` is set; bf16 wins over fp16;
    ``load_in_8bit`` or ``fp16`` is float16; else float32."""
    bf16, fp16 = data.get("bf16"), data.get("fp16")
    if bf16 == "auto":
        if fp16:
            bf16 = False
        else:
            bf16 = bf16_available
            if not bf16 and fp16 is None and not data.get("float16"):
                fp16 = True
    if bf16 is True or data.get("bfloat16"):
        return "bfloat16"
    if data.get("load_in_8bit") or fp16 or data.get("float16"):
        return "float16"
    return "float32"


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
    if config.mode == "full" and isinstance(hf_config, dict) and hf_config.get("quantization_config"):
        raise ValueError(
            f"adapter: midblock with midblock_mode: full trains the base weights, but base_model {path!r} is a "
            "quantized checkpoint (its config.json has a quantization_config), whose weights cannot be trained. "
            "Set midblock_mode: lora (QLoRA), or use the unquantized model as base_model."
        )
    try:
        resolve_layers(num_layers, **config.window_kwargs())
    except WindowError as exc:
        raise ValueError(f"adapter: midblock: {yaml_names(str(exc))} (base_model has {num_layers} layers)") from None


# --------------------------------------------------------------------------- YAML values
# YAML turns unquoted text into numbers and booleans (``01110`` is the octal number 584,
# ``1110`` the number 1110, ``0.2`` a float, ``no`` false) and quoted booleans stay strings
# (``"no"``). Each key's value is checked for the YAML type it needs before the
# MidBlockConfig is built, so the message says how to write it in YAML.

_BOOL_KEYS = ("midblock_train_final_norm", "midblock_train_embeddings", "midblock_truncate_backward",
              "midblock_drift_monitor", "peft_use_rslora")
_CHOICE_KEYS: dict[str, tuple[str, ...]] = {
    "midblock_mode": MODES, "midblock_budget": BUDGETS, "midblock_alpha_policy": ALPHA_POLICIES,
}
_TRUE_WORDS = ("true", "yes", "y", "on", "1")
_FALSE_WORDS = ("false", "no", "n", "off", "0")


def _yaml(value: Any) -> str:
    """``value`` as it would be written in YAML (strings single-quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return repr(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bad(key: str, value: Any, why: str) -> ValueError:
    return ValueError(f"adapter: midblock: {key}: {_yaml(value)} {why}")


def _check_window_value(key: str, value: Any) -> None:
    if value in ("", []):
        raise _bad(key, value, "is empty; give a window (e.g. midblock_window: \"0.2:0.8\", midblock_segments: "
                               "\"01110\" or midblock_layers: \"3-11\"), or remove the key for the default "
                               "window, the layers at 20%-80% depth.")
    integer = isinstance(value, int) and not isinstance(value, bool)
    if key == "midblock_segments" and integer:
        raise _bad(key, value, "is a number, not a mask: YAML reads an unquoted mask as a number, and one that "
                               "starts with 0 as an octal number (01110 becomes 584, 1110 stays 1110). Quote the "
                               "mask: midblock_segments: \"01110\".")
    if key == "midblock_layers":
        if isinstance(value, str) and value.strip():
            try:  # the syntax only; the indices are checked against the model's layer count later
                explicit_layers(value, num_layers=1 << 20)
            except WindowError as exc:
                raise ValueError(f"adapter: midblock: {yaml_names(str(exc))}") from None
            return
        if integer:
            raise _bad(key, value, f"is a bare number; midblock_layers lists layer indices (it is not a layer "
                                   f"count): write midblock_layers: [{value}] for layer {value} alone, or a "
                                   "quoted range such as midblock_layers: \"3-11\".")
        if isinstance(value, (list, tuple)):
            odd = [v for v in value if isinstance(v, bool) or not isinstance(v, int)]
            if odd:
                raise _bad(key, value, f"has items that are not layer indices ({_yaml(odd)}); a list holds "
                                       "integers, e.g. midblock_layers: [3, 4, 5]; write ranges as one quoted "
                                       "string: midblock_layers: \"3-5,9\".")
            return
    if not isinstance(value, str):
        example = {"midblock_window": '"0.2:0.8" (two depth fractions a:b)', "midblock_segments": '"01110"',
                   "midblock_layers": '"3-11" or [3, 4, 5]', "midblock_window_from": "runs/x/analysis.json"}[key]
        raise _bad(key, value, f"is {_kind(value)}; write it as a quoted string, e.g. {key}: {example}.")


def _check_bool(key: str, value: Any) -> None:
    if isinstance(value, bool):
        return
    word = str(value).strip().lower()
    meant = "true" if word in _TRUE_WORDS else "false" if word in _FALSE_WORDS else None
    fix = f"{key}: {meant}" if meant else f"{key}: true or {key}: false"
    quoted = " (quotes make it a string)" if isinstance(value, str) else ""
    raise _bad(key, value, f"is {_kind(value)}, not true/false{quoted}; write the boolean without quotes: {fix}.")


def _check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if isinstance(value, str) and value in allowed:
        return
    hint = ""
    if isinstance(value, str) and value.strip().lower() in allowed:
        hint = f" The values are lower case: {key}: {value.strip().lower()}."
    raise _bad(key, value, f"is not allowed; choose one of {', '.join(map(repr, allowed))}.{hint}")


def _check_target_modules(key: str, value: Any) -> None:
    if isinstance(value, str) and value.strip():
        return  # a preset name, checked (with the allowed names) by MidBlockConfig
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v.strip() for v in value):
        return
    raise _bad(key, value, "must be a preset (attention, mlp, all-linear) or a non-empty list of module names, "
                           "e.g. midblock_target_modules: [q_proj, v_proj]; remove the key for the default.")


def _check_rank(key: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return
    if isinstance(value, str) and value.strip().isdigit():
        why = f"is a string; write the number without quotes: {key}: {value.strip()}."
    elif isinstance(value, float) and math.isfinite(value) and value >= 1:
        why = f"must be a positive integer (a LoRA rank is a whole number), e.g. {key}: {int(value)}."
    else:
        why = f"must be a positive integer (the rank r of the uniform-LoRA baseline), e.g. {key}: 16."
    raise _bad(key, value, why)


def _check_alpha(key: str, value: Any) -> None:
    if _number(value) and math.isfinite(value) and value > 0:
        if float(value).is_integer():
            return
        raise _bad(key, value, f"must be a whole number: Axolotl's config schema types lora_alpha as an integer; "
                               f"write e.g. {key}: {max(1, round(value))}.")
    if isinstance(value, str):
        why = f"is a string; write a number without quotes, e.g. {key}: 32 (the default is 2 * lora_r)."
    else:
        why = f"must be a finite number > 0, e.g. {key}: 32 (the default is 2 * lora_r); remove it for the default."
    raise _bad(key, value, why)


def _check_dropout(key: str, value: Any) -> None:
    if _number(value) and math.isfinite(value) and 0 <= value < 1:
        return
    quoted = "is a string; write a number without quotes" if isinstance(value, str) else "must be a number in [0, 1)"
    raise _bad(key, value, f"{quoted}, e.g. {key}: 0.05 (a probability; the default is 0.0).")


def check_yaml_values(data: Mapping[str, Any]) -> None:
    """Each midblock key and each Axolotl key the plugin reads must have the YAML type it needs
    (``null`` = not set); raises ``ValueError`` naming the key, the value as YAML read it, and
    how to write it."""

    def given(key: str) -> bool:
        return data.get(key) is not None

    for key in WINDOW_KEYS.values():
        if given(key):
            _check_window_value(key, data[key])
    for key in _BOOL_KEYS:
        if given(key):
            _check_bool(key, data[key])
    for key, allowed in _CHOICE_KEYS.items():
        if given(key):
            _check_choice(key, data[key], allowed)
    if given("midblock_target_modules"):
        _check_target_modules("midblock_target_modules", data["midblock_target_modules"])
    for key, check in (("lora_r", _check_rank), ("lora_alpha", _check_alpha), ("lora_dropout", _check_dropout)):
        if given(key):
            check(key, data[key])
