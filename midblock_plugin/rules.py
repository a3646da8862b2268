"""One home per value rule: each rule on an option's value is checked here, once, and every
surface (``MidBlockConfig``, ``EvalSettings``, the plan, the command line, the Axolotl keys,
the TRL example, the job options) calls the same function.

A rule raises :class:`OptionError`, a ``ValueError`` that keeps what it is about apart:
``field`` (the canonical field name, e.g. ``"rank"``), ``value`` and ``rule`` (what is
allowed and how to fix it). Its message is ``field=value rule.``; :func:`respell` (the one
helper for it, no per-surface regexes) gives the same error in a surface's own spelling:

>>> try:
...     check_rank(0)
... except OptionError as exc:
...     print(exc)
...     print(respell(exc, {"rank": "--rank"}))
...     print(respell(exc, {"rank": "midblock_rank"}))
rank=0 must be a positive integer (the uniform-LoRA rank r), e.g. 16.
--rank 0: must be a positive integer (the uniform-LoRA rank r), e.g. 16.
midblock_rank: 0 must be a positive integer (the uniform-LoRA rank r), e.g. 16.

Also the one home of the install hints (:data:`INSTALL_HINTS`, :func:`missing_dependency`).
Import-cheap: no torch; the window rules import :mod:`midblock_plugin.window` (pure
arithmetic) when called.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import re
import sys
from typing import Any, Callable, Mapping, Optional, Union

from midblock_plugin.choices import values as choice_values


# --------------------------------------------------------------------------- the error


class OptionError(ValueError):
    """A bad option value: ``field`` (canonical name), ``value`` and ``rule`` (what is allowed + the fix).

    ``str(exc)`` is ``field=value rule.``; :meth:`spelled` gives it with the field spelled as a
    surface spells it (a flag ``--rank``, a YAML key ``midblock_rank``, a positional ``MODEL_DIR``).
    ``refs`` names other fields the rule mentions, as ``{placeholder}`` s in it: a placeholder
    maps to a field (``"num_fewshot"``) or a field and a value (``("protocol", "paper")``), and
    each is written in the surface's spelling too (``--num-fewshot``, ``--protocol 'paper'``).
    """

    def __init__(self, field: str, value: Any, rule: str, *, refs: Optional[Mapping[str, Any]] = None) -> None:
        self.field, self.value, self.rule = field, value, rule
        self.refs = dict(refs or {})
        self.spelling: Optional[Spelling] = None  # set by respell()
        self.style: Optional[str] = None  # set by respell(): "field", "flag" or "yaml"
        super().__init__(self._render(self._spell))

    def __str__(self) -> str:
        return self._render(self._spell)

    def __reduce__(self):  # picklable (errors cross process boundaries in the launchers)
        return (_rebuild, (type(self), self.__dict__))

    def _spell(self, field: str) -> str:
        found = None
        if self.spelling is not None:
            found = self.spelling(field) if callable(self.spelling) else self.spelling.get(field)
        if found:
            return found
        head = self._name_of(self.field)
        return (
            flag_spelling(field) if field != self.field and _style(self.field, head, self.style) == "flag" else field
        )

    def _name_of(self, field: str) -> str:
        if self.spelling is None:
            return field
        found = self.spelling(field) if callable(self.spelling) else self.spelling.get(field)
        return found or field

    def spelled(self, name: str) -> str:
        """The message with the field spelled ``name``.

        ``name == field``: ``rank=0 must be ...``; a flag (``--rank``) or an upper-case
        positional (``MODEL_DIR``): ``--rank 0: must be ...``; anything else is a YAML /
        mapping key: ``midblock_rank: 0 must be ...`` (the value as YAML writes it). Fields the
        rule mentions are spelled in the same style (flags for a flag).
        """
        flags = _style(self.field, name) == "flag"
        return self._render(lambda f: name if f == self.field else flag_spelling(f) if flags else f)

    def _render(self, spell: Callable[[str], str]) -> str:
        name = spell(self.field)
        rule = self.rule.strip()
        if self.refs:
            rule = rule.format_map(
                {k: _mention(spell, self.style, *(r if isinstance(r, tuple) else (r,))) for k, r in self.refs.items()}
            )
        end = "" if rule.endswith((".", "?", "!")) else "."
        style = _style(self.field, name, self.style)
        if style == "field":
            sep = "" if rule[:1] in ":;," else " "
            return f"{name}={self.value!r}{sep}{rule}{end}"
        if style == "flag":
            return f"{name} {self.value!r}: {rule.lstrip(':;, ')}{end}"
        sep = "" if rule[:1] in ":;," else " "
        return f"{name}: {yaml_value(self.value)}{sep}{rule}{end}"


def as_option_error(field: str, value: Any, exc: Exception) -> OptionError:
    """A check's error about ``field`` as an :class:`OptionError` (so each surface can spell it):
    a message starting with ``field=value`` keeps the rest as the rule."""
    text = str(exc)
    prefix = f"{field}={value!r}"
    rule = text[len(prefix) :].lstrip() if text.startswith(prefix) else f": {text}"
    return OptionError(field, value, rule)


_NO_VALUE = object()


def _style(field: str, name: str, forced: Optional[str] = None) -> str:
    if forced:
        return forced
    if name == field:
        return "field"
    return "flag" if name.startswith("-") or name.isupper() else "yaml"


def _mention(spell: Callable[[str], str], forced: Optional[str], field: str, value: Any = _NO_VALUE) -> str:
    """``field`` (with ``value``) as a surface writes it inside a sentence."""
    name = spell(field)
    if value is _NO_VALUE:
        return name
    style = _style(field, name, forced)
    if style == "field":
        return f"{name}={value!r}"
    return f"{name} {value!r}" if style == "flag" else f"{name}: {yaml_value(value)}"


def _rebuild(cls, state):
    exc = cls.__new__(cls)
    exc.__dict__.update(state)
    exc.args = (str(exc),)
    return exc


Spelling = Union[Mapping[str, str], Callable[[str], Optional[str]]]


def respell(exc: BaseException, spelling: Spelling, style: Optional[str] = None) -> BaseException:
    """``exc`` in a surface's spelling: the one helper every surface uses.

    ``spelling`` maps a field to the surface's name for it (``{"rank": "--rank"}``,
    ``{"rank": "midblock_rank"}``) or is a function doing so (``None``: keep the field); it
    spells the field the error is about and the fields its rule mentions. An
    :class:`OptionError` comes back as a copy of the same class, spelled; any other
    exception comes back unchanged. Use it as ``raise respell(exc, names) from None``.
    ``style`` forces how names are written (``"flag"``: ``--x 1:``, ``"yaml"``: ``x: 1``,
    ``"field"``: ``x=1``), for a surface whose names equal the fields (``midblock_eval``'s keys).
    """
    if style not in (None, "field", "flag", "yaml"):
        raise ValueError(f"style={style!r} is not a style; choose 'field', 'flag' or 'yaml'.")
    if not isinstance(exc, OptionError):
        return exc
    new = copy.copy(exc)
    new.spelling, new.style = spelling, style
    new.args = (str(new),)
    return new


def flag_spelling(field: str) -> str:
    """The command line's spelling of a field: ``lora_alpha`` -> ``--lora-alpha`` (for :func:`respell`)."""
    return "--" + field.replace("_", "-")


def yaml_value(value: Any) -> str:
    """``value`` as it would be written in YAML (strings single-quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    return repr(value)


# --------------------------------------------------------------------------- numbers


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real, finite number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: The rules, as their sentences (the Axolotl docs and the key table quote them).
RANK_RULE = "must be a positive integer (the uniform-LoRA rank r), e.g. 16"
ALPHA_RULE = "must be a positive finite number (default 2*rank), e.g. 32"
DROPOUT_RULE = "must be a number in [0, 1), e.g. 0.05"


def check_rank(value: Any, field: str = "rank") -> int:
    """The uniform-LoRA rank ``r``: a positive integer (not a bool)."""
    if not (is_int(value) and value >= 1):
        raise OptionError(field, value, RANK_RULE)
    return value


def check_alpha(value: Any, field: str = "lora_alpha") -> Any:
    """LoRA alpha: a positive finite number (``None``, the default ``2*rank``, passes)."""
    if value is not None and not (is_number(value) and value > 0):
        raise OptionError(field, value, ALPHA_RULE)
    return value


def check_dropout(value: Any, field: str = "lora_dropout") -> Any:
    """LoRA dropout: a number in ``[0, 1)``."""
    if not (is_number(value) and 0.0 <= value < 1.0):
        raise OptionError(field, value, DROPOUT_RULE)
    return value


def check_bool(value: Any, field: str) -> bool:
    """A real ``bool`` (``1``, ``"true"`` and ``None`` are refused)."""
    if not isinstance(value, bool):
        raise OptionError(field, value, f"must be True or False (a bool, not {type(value).__name__})")
    return value


def check_choice(field: str, value: Any, choice: Any, extra: str = "") -> Any:
    """One of the values of ``choice`` (a ``Literal`` from :mod:`midblock_plugin.choices`);
    ``extra`` is appended to the rule (e.g. what each value means)."""
    allowed = choice_values(choice)
    if not isinstance(value, str) or value not in allowed:
        raise OptionError(field, value, f"is not allowed; choose one of {', '.join(map(repr, allowed))}{extra}")
    return value


# --------------------------------------------------------------------------- the window


def check_window_forms(
    window: Any = None,
    segments: Any = None,
    layers: Any = None,
    window_from: Any = None,
    *,
    names: Optional[Mapping[str, str]] = None,
) -> list[str]:
    """The window as given, before any model is known: at most one of the four forms
    (``names`` spells them for the one-form message), and each given form well formed (a
    fraction window ``'a:b'``, a ``0``/``1`` mask, a layer list, an ``analysis.json`` with a
    recommendation). Layer indices are checked against the model later
    (:func:`midblock_plugin.window.resolve_layers`). Returns the forms given."""
    from midblock_plugin import window as w

    given = w.check_one_window_form(
        names=dict(names or {}), window=window, segments=segments, layers=layers, window_from=window_from
    )
    if window is not None:
        _string("window", window, "e.g. '0.2:0.8'")
        w.parse_fraction_window(window)
    if segments is not None:
        _string("segments", segments, "e.g. '01110' (quote it in YAML)")
        w.validate_mask(segments)
    if layers is not None:
        if isinstance(layers, bool) or not isinstance(layers, (str, int, list, tuple)):
            raise OptionError("layers", layers, "must be a layer list such as '3-11', '3,4,9-12' or [3, 4, 5]")
        if isinstance(layers, (str, list, tuple)) and len(layers) == 0:
            raise w.WindowOptionError("layers", layers, "names no layer; use e.g. '3-11' or [3, 4, 5]")
        layer_ranges(layers)  # parsed now: only the range check against the model's depth waits for the model
    if window_from is not None:
        _string("window_from", window_from, "the path of an analysis.json written by 'midblock analyze'")
        from midblock_plugin.io import read_window_file

        read_window_file(window_from)  # exists and holds a recommendation
    return given


_LAYER_ITEM = re.compile(r"(-?\d+)\s*(?:-\s*(-?\d+))?")


def layer_ranges(spec: Any) -> list[tuple[int, int]]:
    """The layer list ``layers=`` as written, before any model is known: ``(lo, hi)`` pairs
    (inclusive, negative = from the top) of ``"3-11"``, ``"3,4,9-12"``, ``"-4--1"``, an int or a
    list of ints. Refused here: text that is not such a list, a non-integer index, and a range
    that runs backwards whatever the depth (both ends counted from the same side). Which
    indices exist is checked against the model (:func:`midblock_plugin.window.explicit_layers`).

    >>> layer_ranges("3,4,9-12")
    [(3, 3), (4, 4), (9, 12)]
    >>> layer_ranges("-4--1")
    [(-4, -1)]
    """
    from midblock_plugin.window import WindowOptionError

    if isinstance(spec, bool):
        raise WindowOptionError("layers", spec, "is not a layer list; use e.g. '3-11' or [3, 4, 5]")
    if isinstance(spec, int):
        return [(spec, spec)]
    if not isinstance(spec, str):
        try:
            spec_items = list(spec)
        except TypeError:
            raise WindowOptionError("layers", spec, "is not a layer list; use e.g. '3-11' or [3, 4, 5]") from None
        items = []
        for x in spec_items:
            try:
                if isinstance(x, bool):
                    raise ValueError
                index = x if isinstance(x, int) else int(str(x))  # as explicit_layers reads it (numpy ints too)
            except ValueError:
                raise WindowOptionError("layers", spec, f": {x!r} is not a layer index") from None
            items.append((index, index))
        if not items:
            raise WindowOptionError("layers", spec, "names no layer; use e.g. '3-11'")
        return items
    text = spec.strip().strip("[]")
    if not text:
        raise WindowOptionError("layers", "", "names no layer; use e.g. '3-11' or '3,4,9-12'")
    ranges = []
    for part in (p.strip() for p in text.split(",")):
        m = _LAYER_ITEM.fullmatch(part)
        if not m:
            raise WindowOptionError(
                "layers",
                spec,
                f": cannot read {part!r}; write indices and inclusive ranges "
                "separated by commas, e.g. '3,4,9-12' (negative indices count from the top)",
            )
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if (lo < 0) == (hi < 0) and hi < lo:
            raise WindowOptionError("layers", spec, f": range {part!r} runs backwards; write it as lo-hi")
        ranges.append((lo, hi))
    return ranges


def _string(field: str, value: Any, example: str) -> None:
    if not isinstance(value, str):
        from midblock_plugin.window import WindowOptionError

        raise WindowOptionError(field, value, f"must be a string, {example}")


# --------------------------------------------------------------------------- mode x model


def check_quantized_full(mode: Any, quantized: Any, field: str = "mode", error: type = OptionError) -> None:
    """Full mode trains the base weights, which a quantized model does not hold in a trainable
    form. ``quantized`` says how the model is quantized (``"bnb-4bit"``, ``"load_in_4bit: true"``,
    ``"its config.json has a quantization_config"``, ...); falsy: it is not. ``error``: the
    :class:`OptionError` subclass raised (the plan raises a ``WindowOptionError``)."""
    if mode == "full" and quantized:
        raise error(
            field,
            mode,
            f"trains the base weights, but the model is quantized ({quantized}); quantized weights cannot be trained. "
            "Use {lora} (QLoRA) for LoRA mode (QLoRA trains a LoRA adapter on the window over the quantized base), or "
            "load the model without quantization",
            refs={"lora": (field, "lora")},
        )


def check_vllm_rank(rank: Any, field: str = "rank") -> int:
    """A LoRA rank vLLM can serve: a positive integer at most its largest ``--max-lora-rank``
    (:data:`midblock_plugin.serving.VLLM_MAX_LORA_RANKS`); returns the ``--max-lora-rank`` it is served at."""
    from midblock_plugin.serving import VLLM_MAX_LORA_RANKS, vllm_max_lora_rank

    check_rank(rank, field)
    served = vllm_max_lora_rank(rank)
    if served is None:
        raise OptionError(
            field,
            rank,
            f"is above vLLM's largest --max-lora-rank {VLLM_MAX_LORA_RANKS[-1]} (its sizes: "
            f"{', '.join(map(str, VLLM_MAX_LORA_RANKS))}; MaxLoRARanks in vllm/config/lora.py); serve the merged "
            "model, or train with budget 'serve'",
        )
    return served


# --------------------------------------------------------------------------- install hints


#: The one spelling of "install an extra": midblock is not on PyPI, so from a checkout, or from the
#: repository as a pip direct reference (the URL of pyproject.toml's ``[project.urls] Repository``;
#: tests/test_install_lines.py checks that the two agree and that every extra exists).
INSTALL_EXTRA = (
    "pip install -e '.[{extra}]' in a midblock checkout, "
    "or pip install 'midblock-plugin[{extra}] @ git+https://github.com/midblock-plugin/midblock'"
)

#: Optional packages: import name -> (distribution, the ``pip install`` line of its extra in ``pyproject.toml``).
INSTALL_HINTS = {
    "lm_eval": ("lm-eval", INSTALL_EXTRA.format(extra="eval")),
    "matplotlib": ("matplotlib", INSTALL_EXTRA.format(extra="analysis")),
    "deepspeed": ("deepspeed", INSTALL_EXTRA.format(extra="deepspeed")),
    "trl": ("trl", INSTALL_EXTRA.format(extra="trl")),
    "peft": ("peft", INSTALL_EXTRA.format(extra="trl")),
    "datasets": ("datasets", INSTALL_EXTRA.format(extra="trl")),
    "transformers": ("transformers", INSTALL_EXTRA.format(extra="trl")),
    "torch": ("torch", INSTALL_EXTRA.format(extra="trl")),
    "accelerate": ("accelerate", INSTALL_EXTRA.format(extra="trl")),
    "psutil": ("psutil", INSTALL_EXTRA.format(extra="trl")),
    "vllm": ("vllm", INSTALL_EXTRA.format(extra="vllm")),
    "bitsandbytes": ("bitsandbytes", INSTALL_EXTRA.format(extra="qlora")),
    "axolotl": ("axolotl", INSTALL_EXTRA.format(extra="axolotl")),
    "gguf": ("gguf", "pip install gguf"),
    "ray": ("ray", "pip install ray"),
}


class MissingDependency(ImportError):
    """An optional package a feature needs is not installed."""


def install_hint(module: str) -> str:
    """The ``pip install`` line that installs ``module`` (its extra where it has one)."""
    return INSTALL_HINTS.get(module.split(".")[0], (module, f"pip install {module}"))[1]


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without __spec__
        return sys.modules.get(module) is not None


def missing_dependency(module: str, purpose: str, fix: str = "") -> MissingDependency:
    """The error for ``purpose`` needing ``module``, which is not installed, with its install line
    (``fix``: what else to do, appended). Raise it: ``raise missing_dependency("vllm", "--backend vllm")``."""
    dist, install = INSTALL_HINTS.get(module.split(".")[0], (module, f"pip install {module}"))
    text = f"{purpose} needs the optional package {dist!r}, which is not installed: {install}"
    exc = MissingDependency(text + (f" ({fix})." if fix else "."))
    exc.name = module
    return exc


def check_dependency(module: str, purpose: str, fix: str = "") -> None:
    """Raise :func:`missing_dependency` if ``module`` is not installed."""
    if not installed(module):
        raise missing_dependency(module, purpose, fix)
