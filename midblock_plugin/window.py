"""Depth-window arithmetic: the single source of truth for *which layers* are tuned.

Pure arithmetic on a layer count (no torch, no model): everything that needs to know
the window (the plan, the PEFT config, the freezing logic, the Axolotl plugin, the CLI)
gets it from :func:`resolve_layers` through the plan. Where the layers are in a model
is :mod:`midblock_plugin.architecture`'s business.

Three ways to say the window (Zhao et al., "A Layer-wise Analysis of Supervised
Fine-Tuning", ACL 2026):

* a fraction window ``"0.2:0.8"`` (the default) -> layers ``[floor(a*L), floor(b*L))``;
* a segment mask ``"01110"`` (bottom segment first; S = len(mask) segments, segment i
  spans ``[floor(i*L/S), floor((i+1)*L/S))``);
* explicit layers ``"3-11"``, ``"3,4,9-12"`` or a list of ints (negative indices count
  from the top, ranges are inclusive).

>>> resolve_layers(16)
[3, 4, 5, 6, 7, 8, 9, 10, 11]
>>> resolve_layers(16, segments="01110") == resolve_layers(16, window="0.2:0.8")
True
>>> matched_rank(64, 16, 9)
113
"""

from __future__ import annotations

import math
import os
import re
from fractions import Fraction
from typing import Any, Iterable, Sequence

from midblock_plugin.rules import OptionError


DEFAULT_WINDOW = "0.2:0.8"


class WindowError(ValueError):
    """A window, mask, layer list or model that cannot be resolved to layers."""


class WindowOptionError(WindowError, OptionError):
    """A :class:`WindowError` about one window field's value (``field``, ``value``, ``rule``:
    see :class:`midblock_plugin.rules.OptionError`), so each surface can spell the field its way."""


# --------------------------------------------------------------------------- window


def fraction_to_layers(start: float, end: float, num_layers: int) -> list[int]:
    """Layers ``[floor(start*L), floor(end*L))`` (exact rational arithmetic)."""
    if not (0.0 <= start < end <= 1.0):
        raise WindowError(
            f"window '{start}:{end}' is not a fraction window: need 0 <= a < b <= 1 "
            "(e.g. '0.2:0.8'). Use segments='01110' or layers='3-11' for other forms."
        )
    a = Fraction(str(start)) * num_layers
    b = Fraction(str(end)) * num_layers
    layers = list(range(math.floor(a), math.floor(b)))
    if not layers:
        raise WindowError(
            f"window '{start}:{end}' selects no layer of a {num_layers}-layer model "
            f"(floor({start}*{num_layers}) == floor({end}*{num_layers})). Widen the window "
            "or give explicit layers."
        )
    return layers


def parse_fraction_window(spec: str) -> tuple[float, float]:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*:\s*([0-9]*\.?[0-9]+)\s*", str(spec))
    if not m:
        raise WindowOptionError(
            "window",
            spec,
            "is not of the form 'a:b' with fractions of depth, e.g. '0.2:0.8'. "
            "For a segment mask use segments='01110'; for explicit layers use layers='3-11'",
        )
    a, b = float(m.group(1)), float(m.group(2))
    if not (0.0 <= a < b <= 1.0):
        raise WindowOptionError("window", spec, f": need 0 <= a < b <= 1 (got a={a}, b={b}), e.g. '0.2:0.8'")
    return a, b


def segment_bounds(num_layers: int, num_segments: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the S segments of an L-layer model (end exclusive)."""
    return [((i * num_layers) // num_segments, ((i + 1) * num_layers) // num_segments) for i in range(num_segments)]


def validate_mask(mask: str) -> str:
    """Check a segment mask (characters ``0``/``1``, at least one ``1``); return it stripped."""
    mask = str(mask).strip()
    bad = sorted({c for c in mask if c not in "01"})
    if not mask or bad:
        raise WindowOptionError(
            "segments",
            mask,
            "is not a mask of '0'/'1' characters"
            + (f" (stray {', '.join(repr(c) for c in bad)})" if bad else " (it is empty)")
            + "; write one character per segment, bottom first, e.g. '01110'",
        )
    if "1" not in mask:
        raise WindowOptionError(
            "segments", mask, "activates no segment; put a '1' on at least one segment, e.g. '01110'"
        )
    return mask


def segments_to_layers(mask: str, num_layers: int) -> list[int]:
    """Layers of the active segments of a mask like ``"01110"`` (bottom segment first)."""
    mask = validate_mask(mask)
    if len(mask) > num_layers:
        raise WindowOptionError(
            "segments",
            mask,
            f"has {len(mask)} segments but the model has only {num_layers} "
            "layers, so some segments would be empty; use at most one segment per layer",
        )
    layers: list[int] = []
    for (lo, hi), bit in zip(segment_bounds(num_layers, len(mask)), mask):
        if bit == "1":
            layers.extend(range(lo, hi))
    return layers


def explicit_layers(spec: str | int | Iterable[int], num_layers: int) -> list[int]:
    """Parse ``"3-11"``, ``"3,4,9-12"``, ``"-4--1"``, an int or a list of ints, against the model's
    depth. The text is read by :func:`midblock_plugin.rules.layer_ranges` (the one parser, also run
    at construction); here each index is resolved and checked against ``num_layers``."""
    from midblock_plugin.rules import layer_ranges

    items: list[int] = []
    for lo, hi in layer_ranges(spec):
        a, b = _norm_index(lo, num_layers, spec), _norm_index(hi, num_layers, spec)
        if b < a:  # a range mixing signs that runs backwards on this model, e.g. '20--15' on 30 layers
            raise WindowOptionError("layers", spec, f": range '{lo}-{hi}' runs backwards; write it as lo-hi")
        items.extend(range(a, b + 1))
    return _check_nonempty(sorted(set(items)), spec)


def _norm_index(i: int, num_layers: int, spec: Any) -> int:
    j = i + num_layers if i < 0 else i
    if not 0 <= j < num_layers:
        raise WindowOptionError(
            "layers",
            spec,
            f": layer {i} is out of range for a {num_layers}-layer model "
            f"(allowed 0..{num_layers - 1}, or -{num_layers}..-1 from the top)",
        )
    return j


def _check_nonempty(layers: list[int], spec: Any) -> list[int]:
    if not layers:
        raise WindowOptionError("layers", spec, "names no layer; use e.g. '3-11'")
    return layers


#: The four ways to say the window, in the order they are documented.
WINDOW_FORMS = ("window", "segments", "layers", "window_from")


def is_given(value: Any) -> bool:
    """Whether a window form counts as given: anything but ``None`` (an empty string is given,
    and then refused as naming no layer, never taken to mean the default)."""
    return value is not None


def check_one_window_form(names: dict[str, str] | None = None, **forms: Any) -> list[str]:
    """The window forms given in ``forms`` (see :data:`WINDOW_FORMS`); raise if more than one.

    ``names`` maps a form to the spelling the user wrote (e.g. ``midblock_segments`` in
    Axolotl YAML, ``--segments`` on the command line) for the message.
    """
    given = [k for k in WINDOW_FORMS if is_given(forms.get(k))]
    if len(given) > 1:
        names = names or {}
        spell = [names.get(k, k) for k in WINDOW_FORMS]
        raise WindowError(
            f"give only one of {' / '.join(spell)} (got {', '.join(sorted(names.get(k, k) for k in given))}); "
            "remove all but one."
        )
    return given


def resolve_layers(
    num_layers: int,
    *,
    window: str | None = None,
    segments: str | None = None,
    layers: str | int | Sequence[int] | None = None,
    window_from: str | os.PathLike | None = None,
) -> list[int]:
    """Resolve the window to a sorted list of layer indices. At most one form may be given;
    with none, the paper's ``"0.2:0.8"`` window is used."""
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise WindowError(f"num_layers={num_layers!r}: need a positive integer layer count.")
    given = check_one_window_form(window=window, segments=segments, layers=layers, window_from=window_from)
    if "segments" in given:
        return segments_to_layers(str(segments), num_layers)
    if "layers" in given:
        return explicit_layers(layers, num_layers)  # type: ignore[arg-type]
    if "window_from" in given:
        from midblock_plugin.io import read_window_file  # the one JSON read of the window

        rec = read_window_file(window_from)  # type: ignore[arg-type]
        expected = rec.get("num_layers")
        if expected is not None and int(expected) != num_layers:
            raise WindowOptionError(
                "window_from",
                str(window_from),
                f"was computed for a {expected}-layer model, "
                f"but this model has {num_layers} layers; rerun 'midblock analyze' on this model",
            )
        return explicit_layers(rec["layers"], num_layers)
    a, b = parse_fraction_window(DEFAULT_WINDOW if window is None else window)
    return fraction_to_layers(a, b, num_layers)


def describe_window(num_layers: int, layers: Sequence[int]) -> str:
    """Compact ``"3-11"`` / ``"1-3,8"`` form of a layer list."""
    runs: list[str] = []
    start = prev = None
    for i in layers:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            runs.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = i
    if start is not None:
        runs.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ",".join(runs)


# --------------------------------------------------------------------------- rank budget


def matched_rank(rank: int, num_layers: int, num_active: int) -> int:
    """Rank per active layer so the rank sum matches uniform LoRA: ``floor(r*L/n)``."""
    if rank < 1 or num_active < 1 or num_active > num_layers:
        raise WindowError(
            f"matched_rank: need rank >= 1 and 1 <= active layers <= L (got r={rank}, n={num_active}, L={num_layers})."
        )
    return (rank * num_layers) // num_active
