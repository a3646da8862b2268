"""The window rule of ``midblock analyze``: a heuristic that turns a per-layer change curve
into a recommended tuning window.

The rule (documented in ``docs/analysis.md``):

1. ``signal[l]`` is a per-layer change: ``1 - CKA(base_l, tuned_l)`` for two models, or
   ``1 - CKA(h_{l-1}, h_l)`` (how much layer l transforms its input) for one model.
2. The bottom ``lo = floor(0.2 * L)`` layers are always left out (the paper's lower bound).
3. Over the layers ``[lo, L)``, a layer counts as "changed" when its change is at least a
   quarter of the way from the least to the most changed layer:
   ``c >= min + 0.25 * (max - min)``. The top block is the run of changed layers that
   ends at the last layer; it starts at ``u``, clamped to ``[ceil(L/2), L-1]`` (so the
   window keeps at least the lower half of the admissible band and the last layer is
   always out).
4. The top block is trusted only if its mean change is at least ``min_ratio`` (1.5)
   times the mean change of ``[lo, u)`` and exceeds it by ``min_gap`` (1e-4), and the last
   layer is changed; otherwise the paper's default window ``0.2:0.8`` is returned.
5. The window is ``[lo, u)``. With one model, ``u`` is further capped at ``floor(0.8 L)``:
   intrinsic statistics may narrow the paper's window but never widen it.

It is a heuristic chosen to reproduce the paper's finding (a stable middle, a sharply
changing top); it is not a guarantee that the window trains best.

>>> rec = recommend_window([0.0] * 2 + [0.01] * 6 + [0.2, 0.3], basis="cka")
>>> rec.layers, rec.window, rec.segments
([2, 3, 4, 5, 6, 7], '2-7', '01110')
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from midblock_plugin.window import WindowError, describe_window, resolve_layers, segment_bounds


LOWER_FRACTION = 0.2
UPPER_FRACTION_SINGLE = 0.8
MIN_RATIO = 1.5
THRESHOLD = 0.25
MIN_GAP = 1e-4
NUM_SEGMENTS = 5

#: One-sentence descriptions of the rule per basis (stored in the JSON's ``rule``).
RULES = {
    "cka": (
        "Window [floor(0.2L), u): the top block [u, L) is the run of last layers whose change "
        "1 - CKA(base, tuned) is at least min + 0.25*(max - min) over layers >= floor(0.2L), with u "
        "clamped to [ceil(L/2), L-1] and kept only if that block changes at least 1.5x more than "
        "the window; otherwise the paper's 0.2:0.8."
    ),
    "adjacent_cka": (
        "Window [floor(0.2L), u): the top block [u, L) is the run of last layers whose layer-to-layer "
        "change 1 - CKA(h_{l-1}, h_l) is at least min + 0.25*(max - min) over layers >= floor(0.2L), "
        "with u clamped to [ceil(L/2), floor(0.8L)] and kept only if that block changes at least 1.5x "
        "more than the window; otherwise the paper's 0.2:0.8."
    ),
}


@dataclass
class Recommendation:
    """A recommended window and the evidence behind it (the JSON ``recommendation`` object).

    Attributes:
        layers: sorted layer indices of the window.
        num_layers: L, the model's decoder layer count.
        window: the ``describe_window`` string, e.g. ``"3-11"``.
        segments: best-matching mask over 5 segments (e.g. ``"01110"``), None if L < 5.
        segments_jaccard: overlap (intersection over union) of that mask with ``layers``.
        rule: one sentence describing the rule.
        basis: ``"cka"`` (two models), ``"adjacent_cka"`` (one model) or ``"default"``.
        signal: the per-layer change curve the rule read (None where undefined).
        change_point: u, the first layer of the top block (the window ends below it), or None on fallback.
        fallback: why the paper's default window was used, or None.
        heuristic: always True: the window is a suggestion, not a guarantee.
    """

    layers: list[int]
    num_layers: int
    window: str
    segments: Optional[str]
    segments_jaccard: Optional[float]
    rule: str
    basis: str
    signal: list[Optional[float]] = field(default_factory=list)
    change_point: Optional[int] = None
    fallback: Optional[str] = None
    heuristic: bool = True

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def best_segment_mask(
    layers: Sequence[int], num_layers: int, num_segments: int = NUM_SEGMENTS
) -> tuple[Optional[str], Optional[float]]:
    """The mask over ``num_segments`` segments whose layers best overlap ``layers``
    (highest Jaccard index; ties go to fewer active segments, then the lower mask)."""
    if num_layers < num_segments or not layers:
        return None, None
    target = set(layers)
    bounds = segment_bounds(num_layers, num_segments)
    best: tuple[float, int, str] | None = None
    for bits in itertools.product("01", repeat=num_segments):
        mask = "".join(bits)
        if "1" not in mask:
            continue
        chosen = {i for (lo, hi), b in zip(bounds, mask) if b == "1" for i in range(lo, hi)}
        jac = len(chosen & target) / len(chosen | target)
        key = (jac, -mask.count("1"), mask)
        if best is None or (key[0], key[1]) > (best[0], best[1]):
            best = key
    assert best is not None
    return best[2], round(best[0], 6)


def _default(num_layers: int, basis: str, signal: list, reason: str) -> Recommendation:
    try:
        layers = resolve_layers(num_layers)
    except WindowError:  # 0.2:0.8 selects nothing in a 1-layer model
        layers = list(range(num_layers))
    seg, jac = best_segment_mask(layers, num_layers)
    return Recommendation(
        layers=layers, num_layers=num_layers, window=describe_window(num_layers, layers),
        segments=seg, segments_jaccard=jac, rule=RULES.get(basis, RULES["cka"]), basis=basis,
        signal=signal, change_point=None, fallback=reason,
    )


def recommend_window(
    signal: Sequence[Optional[float]],
    *,
    basis: str = "cka",
    min_ratio: float = MIN_RATIO,
    min_gap: float = MIN_GAP,
    threshold: float = THRESHOLD,
) -> Recommendation:
    """Apply the documented rule to a per-layer change curve (one value per decoder layer).

    ``basis="cka"`` for ``1 - CKA(base, tuned)``; ``basis="adjacent_cka"`` for the
    single-model layer-to-layer change (caps the top at ``floor(0.8 L)``).
    """
    if basis not in RULES:
        raise ValueError(f"basis={basis!r} is not one of {sorted(RULES)}")
    num_layers = len(signal)
    if num_layers < 1:
        raise ValueError("recommend_window: the change curve is empty; need one value per layer.")
    clean: list[Optional[float]] = [
        None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v) for v in signal
    ]
    lo = math.floor(LOWER_FRACTION * num_layers)
    top = num_layers - 1 if basis == "cka" else min(num_layers - 1, math.floor(UPPER_FRACTION_SINGLE * num_layers))
    first = max(lo + 1, math.ceil(num_layers / 2))
    if num_layers < 3 or first > top:
        return _default(num_layers, basis, clean, f"a {num_layers}-layer model is too shallow to split")
    span = clean[lo:]
    if any(v is None for v in span):
        return _default(num_layers, basis, clean, "the change curve has undefined values above the bottom 20%")
    vals = [float(v) for v in span]  # type: ignore[arg-type]
    c_min, c_max = min(vals), max(vals)
    theta = c_min + threshold * (c_max - c_min)
    start = len(vals)
    while start > 0 and vals[start - 1] >= theta:
        start -= 1
    if start == len(vals) or c_max - c_min < min_gap:
        return _default(num_layers, basis, clean,
                        "the last layer is not among the most changed ones" if c_max - c_min >= min_gap
                        else f"the change curve is flat (range {c_max - c_min:.3g} < {min_gap:g})")
    best_u = min(max(lo + start, first), top)
    k = best_u - lo
    below = sum(vals[:k]) / k
    above = sum(vals[k:]) / (len(vals) - k)
    if not (above >= min_ratio * below and above - below >= min_gap):
        return _default(
            num_layers, basis, clean,
            f"no clear top block: layers >= {best_u} change {above:.4g} on average vs {below:.4g} below "
            f"(need >= {min_ratio}x and a gap >= {min_gap:g})",
        )
    layers = list(range(lo, best_u))
    seg, jac = best_segment_mask(layers, num_layers)
    return Recommendation(
        layers=layers, num_layers=num_layers, window=describe_window(num_layers, layers),
        segments=seg, segments_jaccard=jac, rule=RULES[basis], basis=basis, signal=clean,
        change_point=best_u, fallback=None,
    )
