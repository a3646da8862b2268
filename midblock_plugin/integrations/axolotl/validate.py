"""The checks of a raw Axolotl config dict under ``adapter: midblock``, run by the pydantic
model (:mod:`.args`) when Axolotl loads the config, before any weights are read.

Each value rule is the core's, checked once (``MidBlockConfig``, ``EvalSettings``,
:mod:`midblock_plugin.rules`); here are only what an Axolotl config adds: unknown
``midblock_*`` keys, Axolotl keys that contradict the adapter, combinations of keys, and how
YAML typed a value the core refused (an unquoted mask ``01110`` is the octal number 584, a
quoted ``"no"`` a string): :func:`yaml_reading` says how to write it. Every message names the
YAML key and the fix (:func:`.keys.yaml_error`).

Needs the midblock core only (no Axolotl, no pydantic, no torch).
"""

from __future__ import annotations

import difflib
import json
import os
from typing import Any, Mapping, get_type_hints

from midblock_plugin import rules
from midblock_plugin.choices import values as choice_values
from midblock_plugin.config import BOOL_FIELDS, MidBlockConfig
from midblock_plugin.integrations.axolotl.axolotl_compat import check_axolotl_schema, quantized_by
from midblock_plugin.integrations.axolotl.keys import (
    AXOLOTL_ALIASES,
    AXOLOTL_KEYS,
    AXOLOTL_TARGET_KEYS,
    EVAL_KEY,
    EXTRA_KEYS,
    KEY_PREFIX,
    MIDBLOCK_KEYS,
    PREFIX,
    SPELLING,
    WINDOW_KEYS,
    config_kwargs,
    eval_fields,
    eval_settings_from,
    given,
    is_midblock,
    yaml_error,
)
from midblock_plugin.window import WindowError, explicit_layers


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


# --------------------------------------------------------------------------- the midblock keys


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

    _check_window(data)
    try:
        config = MidBlockConfig(**config_kwargs(data))  # every value rule, once
    except (ValueError, TypeError) as exc:
        raise _yaml_error(exc) from None
    check_axolotl_schema(data)
    conflicts = [k for k in CONFLICTING_KEYS if given(data, k)]
    if conflicts:
        lines = "; ".join(f"{k} ({CONFLICTING_KEYS[k]})" for k in conflicts)
        raise ValueError(
            f"adapter: midblock cannot be combined with {', '.join(conflicts)}: remove "
            f"{'it' if len(conflicts) == 1 else 'them'} from the config. Why: {lines}."
        )
    if given(data, "midblock_target_modules"):
        other = next((k for k in AXOLOTL_TARGET_KEYS if given(data, k)), None)
        if other:
            raise ValueError(
                f"{PREFIX}the target modules are given twice (midblock_target_modules and {other}); "
                f"remove one of them."
            )
    quantized = quantized_by(data)
    try:
        rules.check_quantized_full(config.mode, quantized and f"{quantized}: true")
    except rules.OptionError as exc:
        raise yaml_error(exc, hint=f"Remove {quantized} to train the layers in bf16/fp32.") from None
    if config.mode == "full":
        if given(data, "lora_model_dir"):
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


def _check_window(data: Mapping[str, Any]) -> None:
    """The window keys, before the model is known: the one-form rule and each form
    (:func:`midblock_plugin.rules.check_window_forms`, with the YAML key names), the syntax of a
    layer list, and one YAML refusal the core has no reason for: ``midblock_layers: 3``."""
    forms = {form: data.get(key) for form, key in WINDOW_KEYS.items() if data.get(key) is not None}
    layers = forms.get("layers")
    if rules.is_int(layers):
        raise ValueError(
            f"{PREFIX}midblock_layers: {layers} is a bare number; midblock_layers lists layer indices (it is not a "
            f"layer count): write midblock_layers: [{layers}] for layer {layers} alone, or a quoted range such as "
            'midblock_layers: "3-11".'
        )
    try:
        rules.check_window_forms(**forms, names=WINDOW_KEYS)
        if isinstance(layers, (str, list, tuple)):  # the syntax; the indices are checked against the model later
            explicit_layers(layers, num_layers=1 << 20)
    except (ValueError, TypeError) as exc:
        raise _yaml_error(exc) from None


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
    if isinstance(hf_config, dict):
        check_quantized_checkpoint(config.mode, path, hf_config.get("quantization_config"))
    try:
        resolve_layers(num_layers, **config.window_kwargs())
    except WindowError as exc:
        raise yaml_error(exc, hint=f"(base_model has {num_layers} layers)") from None


def check_quantized_checkpoint(mode: str, base_model: str, quantization_config: Any) -> None:
    """Full mode on a checkpoint that is quantized (its config.json has a ``quantization_config``):
    :func:`midblock_plugin.rules.check_quantized_full`, spelled with the YAML keys."""
    try:
        rules.check_quantized_full(mode, quantization_config and "a quantization_config in its config.json")
    except rules.OptionError as exc:
        raise yaml_error(
            exc,
            hint=f"base_model: {base_model!r} is a quantized checkpoint; set midblock_mode: "
            "lora (QLoRA), or use the unquantized model as base_model.",
        ) from None


# --------------------------------------------------------------------------- how YAML typed a value

#: An example of each key as YAML writes it, for the fixes.
_EXAMPLES = {
    "midblock_window": '"0.2:0.8" (two depth fractions a:b)',
    "midblock_segments": '"01110"',
    "midblock_layers": '"3-11" or [3, 4, 5]',
    "midblock_window_from": "runs/x/analysis.json",
    "midblock_target_modules": "[q_proj, v_proj]",
}
_TRUE_WORDS = ("true", "yes", "y", "on", "1")
_FALSE_WORDS = ("false", "no", "n", "off", "0")


def _yaml_error(exc: BaseException) -> ValueError:
    """A core error on one key, with what YAML made of the value where that is the cause (:func:`yaml_reading`)."""
    if not isinstance(exc, rules.OptionError) or exc.field not in SPELLING:
        return yaml_error(exc)
    key = SPELLING[exc.field]
    reading = yaml_reading(exc.field, key, exc.value)
    if reading:
        return ValueError(f"{PREFIX}{key}: {rules.yaml_value(exc.value)} {reading}")
    return yaml_error(exc, hint=_case_hint(exc.field, key, exc.value))


def yaml_reading(field: str, key: str, value: Any) -> str | None:
    """Why the value of ``key`` (MidBlockConfig ``field``), which the core refused, is not what
    the user meant, in YAML terms, with how to write it; ``None`` where YAML is not the cause."""
    kind = _kind(value)
    if value in ("", []) and (field in WINDOW_KEYS or field == "target_modules"):
        if field == "target_modules":
            return (
                f"must be a preset (attention, mlp, all-linear) or a non-empty list of module names, e.g. {key}: "
                f"{_EXAMPLES[key]}; remove the key for the default."
            )
        return (
            'is empty; give a window (e.g. midblock_window: "0.2:0.8", midblock_segments: "01110" or '
            'midblock_layers: "3-11"), or remove the key for the default window, the layers at 20%-80% depth.'
        )
    if field == "segments" and rules.is_int(value):
        return (
            "is a number, not a mask: YAML reads an unquoted mask as a number, and one that starts with 0 as an "
            'octal number (01110 becomes 584, 1110 stays 1110). Quote the mask: midblock_segments: "01110".'
        )
    if field == "layers" and isinstance(value, (list, tuple)):
        odd = [v for v in value if not rules.is_int(v)]
        if odd:
            return (
                f"has items that are not layer indices ({rules.yaml_value(odd)}); a list holds integers, e.g. "
                'midblock_layers: [3, 4, 5]; write ranges as one quoted string: midblock_layers: "3-5,9".'
            )
    if field in WINDOW_KEYS and not isinstance(value, (str, list, tuple)):
        return f"is {kind}; write it as a quoted string, e.g. {key}: {_EXAMPLES[key]}."
    if field in BOOL_FIELDS and not isinstance(value, bool):
        word = str(value).strip().lower()
        meant = "true" if word in _TRUE_WORDS else "false" if word in _FALSE_WORDS else None
        fix = f"{key}: {meant}" if meant else f"{key}: true or {key}: false"
        quoted = " (quotes make it a string)" if isinstance(value, str) else ""
        return f"is {kind}, not true/false{quoted}; write the boolean without quotes: {fix}."
    if field in ("rank", "lora_alpha", "lora_dropout") and isinstance(value, str) and _numeric(value):
        return f"is a string; write the number without quotes: {key}: {value.strip()}."
    return None


def _case_hint(field: str, key: str, value: Any) -> str:
    """``The values are lower case: midblock_mode: lora.`` for a choice written in another case."""
    allowed = choice_values(_FIELD_TYPES.get(field))
    if isinstance(value, str) and value not in allowed and value.strip().lower() in allowed:
        return f"The values are lower case: {key}: {value.strip().lower()}."
    return ""


_FIELD_TYPES = get_type_hints(MidBlockConfig)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
    unknown = sorted(set(values) - set(eval_fields()))
    if unknown:
        raise ValueError(
            f"{EVAL_KEY}: unknown evaluation option {_did_you_mean(unknown, eval_fields())}; allowed fields: "
            f"{', '.join(eval_fields())}. Fix the spelling or remove the field."
        )
    settings = eval_settings_from(values)
    if settings.enabled and settings.backend == "vllm":  # a missing vLLM fails with the config, not after training
        from midblock_plugin.evaluation.saved import check_backend

        try:
            check_backend(settings.backend, settings)
        except ImportError as exc:
            raise ValueError(f"{EVAL_KEY}: backend: vllm: {exc}") from None
    return values


def _did_you_mean(unknown: list[str], known: list[str], aliases: Mapping[str, str] | None = None) -> str:
    """``'key' (did you mean 'closest'?)`` for each unknown key; ``aliases`` maps other spellings
    (``midblock_rank``) to the key they stand for (``lora_r``)."""
    aliases = aliases or {}
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, [*known, *aliases], n=1)
        parts.append(f"{key!r}" + (f" (did you mean {aliases.get(close[0], close[0])!r}?)" if close else ""))
    return ", ".join(parts)
