"""Axolotl YAML keys <-> :class:`~midblock_plugin.config.MidBlockConfig` /
:class:`~midblock_plugin.evaluation.EvalSettings` fields: the mapping, and the core's errors
spelled with the YAML keys.

The keys and what they do are documented in ONE table, ``docs/axolotl.md#keys``
(``tests/test_axolotl_keys.py`` checks it against :class:`~.args.MidBlockArgs` and this
module). Every value rule is the core's (``MidBlockConfig``, ``EvalSettings``,
:mod:`midblock_plugin.rules`); its error is rewritten into YAML key names by
:func:`midblock_plugin.rules.respell` with :data:`SPELLING`
(:func:`yaml_error`, :func:`eval_error`). The checks of a raw config are in :mod:`.validate`; what reproduces
Axolotl's own behaviour is in :mod:`.axolotl_compat`.

This module needs the midblock core only (no Axolotl, no pydantic, no torch).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from midblock_plugin.config import MidBlockConfig
from midblock_plugin.integrations.axolotl.axolotl_compat import AXOLOTL_DEFAULTS
from midblock_plugin.rules import respell, yaml_value
from midblock_plugin.window import WINDOW_FORMS


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
    KEY_PREFIX + f.name: f.name for f in dataclasses.fields(MidBlockConfig) if f.name not in AXOLOTL_KEYS.values()
}

#: The YAML spelling of each window form (``midblock_window``, ...), for the one-window rule.
WINDOW_KEYS: dict[str, str] = {form: KEY_PREFIX + form for form in WINDOW_FORMS}

#: Plugin keys that are not MidBlockConfig fields: the evaluation (works with any adapter), and
#: whether a run replaces a previous midblock run with another plan in ``output_dir``.
EVAL_KEY = "midblock_eval"
OVERWRITE_KEY = "midblock_overwrite"
EXTRA_KEYS: tuple[str, ...] = (EVAL_KEY, OVERWRITE_KEY)

#: MidBlockConfig field -> its YAML key: the spelling :func:`~midblock_plugin.rules.respell` gives the core's errors.
SPELLING: dict[str, str] = {
    **{field: key for key, field in MIDBLOCK_KEYS.items()},
    **{field: key for key, field in AXOLOTL_KEYS.items()},
}

#: ``midblock_<field>`` spellings of the fields that Axolotl's own keys set (``midblock_rank``
#: is ``lora_r``), plus short forms: an unknown key that resembles one gets that Axolotl key suggested.
AXOLOTL_ALIASES: dict[str, str] = {
    **{KEY_PREFIX + field: key for key, field in AXOLOTL_KEYS.items()},
    **{
        KEY_PREFIX + short: key
        for key, short in (
            ("lora_r", "r"),
            ("lora_r", "lora_r"),
            ("lora_alpha", "alpha"),
            ("lora_dropout", "dropout"),
            ("peft_use_rslora", "rslora"),
        )
    },
}

#: MidBlockConfig fields that decide the plan a checkpoint was trained with (not dropout, logging, truncation).
PLAN_FIELDS: tuple[str, ...] = (
    *WINDOW_FORMS,
    "mode",
    "rank",
    "budget",
    "lora_alpha",
    "alpha_policy",
    "use_rslora",
    "target_modules",
    "train_final_norm",
    "train_embeddings",
)

#: Prefix of the errors about the midblock keys (``midblock_eval`` errors start with ``midblock_eval:``).
PREFIX = "adapter: midblock: "


# --------------------------------------------------------------------------- config dict -> MidBlockConfig


def is_midblock(cfg: Mapping[str, Any]) -> bool:
    return cfg.get("adapter") == ADAPTER_NAME


def given(cfg: Mapping[str, Any], key: str) -> bool:
    """Whether ``key`` is set to something (``null``, ``''``, ``[]`` and ``false`` are not)."""
    value = cfg.get(key)
    return value is not None and value != "" and value != [] and value is not False


def config_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The MidBlockConfig fields an Axolotl config (raw dict or ``DictDefault``) sets, by the mapping:
    the ``midblock_*`` keys, Axolotl's LoRA keys and its target-module keys (``null`` = not set)."""
    kwargs: dict[str, Any] = {}
    for key, field_name in (*MIDBLOCK_KEYS.items(), *AXOLOTL_KEYS.items()):
        if cfg.get(key) is not None:
            kwargs[field_name] = cfg.get(key)
    for field_name, default in AXOLOTL_DEFAULTS.items():
        kwargs.setdefault(field_name, default)
    if "target_modules" not in kwargs:
        if cfg.get("lora_target_linear"):
            kwargs["target_modules"] = "all-linear"
        elif given(cfg, "lora_target_modules"):
            tm = cfg.get("lora_target_modules")
            kwargs["target_modules"] = [tm] if isinstance(tm, str) else list(tm)
    if isinstance(kwargs.get("layers"), tuple):
        kwargs["layers"] = list(kwargs["layers"])
    return kwargs


def midblock_config_from_cfg(cfg: Mapping[str, Any]) -> MidBlockConfig:
    """The :class:`MidBlockConfig` that an Axolotl config (raw dict or ``DictDefault``) asks for.

    Raises ``ValueError`` whose message names the YAML keys (:func:`yaml_error`).
    """
    try:
        return MidBlockConfig(**config_kwargs(cfg))
    except (ValueError, TypeError) as exc:
        raise yaml_error(exc) from None


def yaml_error(exc: BaseException, spelling: Any = None, prefix: str = PREFIX, hint: str = "") -> ValueError:
    """The core's error as the Axolotl user reads it: ``prefix`` + the message with the fields
    written as YAML keys (``lora_r: 0 must be ...``: :func:`~midblock_plugin.rules.respell` with
    ``spelling``, default :data:`SPELLING`), then ``hint``."""
    message = str(respell(exc, SPELLING if spelling is None else spelling, style="yaml"))
    return ValueError(f"{prefix}{message}{(' ' + hint) if hint else ''}")


# --------------------------------------------------------------------------- midblock_eval -> EvalSettings


def eval_fields() -> list[str]:
    """The fields of :class:`~midblock_plugin.evaluation.EvalSettings`: what ``midblock_eval`` accepts."""
    from midblock_plugin.evaluation.settings import EvalSettings

    return [f.name for f in dataclasses.fields(EvalSettings)]


def eval_error(exc: BaseException) -> ValueError:
    """An EvalSettings error as the Axolotl user reads it: ``midblock_eval: limit: 0 must be ...``
    (the keys inside ``midblock_eval`` are the EvalSettings fields)."""
    return yaml_error(exc, {}, prefix=f"{EVAL_KEY}: ")


def eval_settings_from(values: Mapping[str, Any] | None):
    """The :class:`~midblock_plugin.evaluation.EvalSettings` a ``midblock_eval`` mapping asks for.

    Bad values raise ``ValueError`` naming ``midblock_eval`` and the field (unknown fields are
    refused, with the closest one, by :func:`.validate.normalize_eval_value` first). Cheap:
    imports neither torch nor lm-eval.
    """
    from midblock_plugin.evaluation.settings import EvalSettings

    try:
        return EvalSettings.from_dict(dict(values or {}))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise eval_error(exc) from None


# --------------------------------------------------------------------------- a saved config, in YAML


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
        key = "lora_target_modules (or midblock_target_modules)" if field == "target_modules" else SPELLING[field]
        out.append(f"{key}: {_shown(old)} (this config: {_shown(new)})")
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _shown(value: Any) -> str:
    return "not set" if value is None or value == "" else yaml_value(value)
