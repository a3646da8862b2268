"""The window search of ``midblock analyze``: turn a per-layer change curve into a
recommended tuning window.

The rule (documented in ``docs/analysis.md``):

1. ``signal[l] >= 0`` is how much layer ``l`` *itself* changed (or, for the pre-training
   probe, how much it would move): ``own_output`` (the relative change of the layer's own
   residual update on the same base inputs), ``weight`` (the relative norm of its effective
   weight update) or ``gradient_probe``. Negative values are clipped to 0.
2. ``share[l] = signal[l] / sum(signal)`` is the layer's share of the total change.
3. Every contiguous window ``[a, b]`` (start and end free; the paper's single- and two-segment
   masks ``01000``, ``01100``, ``01110``, ... are among them) is scored by
   ``objective = captured - used``, where ``captured = sum(share[a..b])`` is the share of the
   change it holds and ``used = (b - a + 1) / L`` the share of the layers it trains. A layer
   raises the objective exactly when it changes more than the average layer (``share > 1/L``),
   so the best window is the run of above-average layers, with a below-average layer inside
   kept only when its neighbours make up for it. Ties go to the shorter window, then the
   lower one.
4. If the best objective is below ``min_objective`` (0.1: the window must hold at least 10
   points more of the change than of the layers), the change is not concentrated and the
   paper's default ``0.2:0.8`` is returned with ``fallback`` saying why; likewise for an
   all-zero or undefined curve.
5. Every window is trained under the uniform budget: rank ``floor(r * L / n)`` on each of its
   ``n`` layers (``rank_multiplier = L / n``); the search itself does not depend on ``r``.

``segments`` is the 5-segment mask only when it selects exactly the recommended layers
(``None`` otherwise); ``nearest_mask`` / ``nearest_mask_jaccard`` give the closest mask.

>>> rec = recommend_window([0.0] * 3 + [1.0, 2.0, 1.0] + [0.0] * 4, signal_name="own_output")
>>> rec.layers, rec.window, rec.captured_share
([3, 4, 5], '3-5', 1.0)
>>> recommend_window([0.0] * 6 + [1.0] * 6 + [0.0] * 18).segments  # the paper's best 7B mask
'01000'
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from midblock_plugin.window import WindowError, describe_window, resolve_layers, segment_bounds, segments_to_layers


MIN_OBJECTIVE = 0.1
NUM_SEGMENTS = 5
_TIE = 1e-12

#: The signals the search reads, with a one-line meaning (stored in the JSON).
SIGNALS = {
    "own_output": "relative change of the layer's own residual update on the same base input: "
    "||f_tuned(h) - f_base(h)|| / ||f_base(h)||, h = the base model's input to the layer",
    "weight": "relative norm of the layer's effective weight update ||W_tuned - W_base||_F / ||W_base||_F "
    "(for an adapter, W_tuned - W_base = the tuner's delta weight, e.g. scale * B @ A)",
    "gradient_probe": "before training: relative gradient norm of the layer's projection weights on a few "
    "calibration batches, sqrt(mean_batches ||g||^2) / ||W|| (a diagonal-Fisher score)",
    "inherited_cka": "1 - CKA(base_l, tuned_l) of the hidden states: change passed up from below plus the "
    "layer's own (kept for comparison; it spreads change to every layer above a changed one)",
    "none": "no per-layer signal (one model and no --probe): the paper's default window",
}

RULE = (
    "Among every contiguous window [a, b] of the L layers, the one maximising captured - used, where captured = "
    "the window's share of the summed per-layer change and used = its share of the layers (n/L); ties go to the "
    "shorter, then the lower window. If no window scores at least {min_objective:g} (the change is not "
    "concentrated) the paper's 0.2:0.8 is used. Each window layer gets rank floor(r*L/n), the uniform budget."
)


@dataclass
class Recommendation:
    """A recommended window and the evidence behind it (the JSON ``recommendation`` object).

    Attributes:
        layers: sorted layer indices of the window (empty when ``refused``).
        num_layers: L, the model's decoder layer count.
        window: the ``describe_window`` string, e.g. ``"3-11"``.
        segments: the 5-segment mask that selects exactly ``layers`` (e.g. ``"01000"``), else None.
        nearest_mask: the 5-segment mask closest to ``layers`` (highest Jaccard index).
        nearest_mask_jaccard: that mask's overlap with ``layers``.
        signal_name: the per-layer signal read (a key of :data:`SIGNALS`, or ``"none"``).
        signal: the per-layer values as read (None where undefined).
        captured_share: the window's share of the summed signal.
        layer_share: n / L.
        objective: captured_share - layer_share.
        rank_multiplier: L / n: each window layer gets rank floor(r * L / n) under the uniform budget.
        rule: the rule, in one paragraph.
        fallback: why the paper's default window was used, or None.
        refused: why no window is recommended at all (e.g. a window-tuned TUNED), or None.
        heuristic: always True: the window is a suggestion to be confirmed by a sweep.
    """

    layers: list[int]
    num_layers: int
    window: str
    segments: Optional[str]
    nearest_mask: Optional[str]
    nearest_mask_jaccard: Optional[float]
    signal_name: str
    signal: list[Optional[float]] = field(default_factory=list)
    captured_share: Optional[float] = None
    layer_share: Optional[float] = None
    objective: Optional[float] = None
    rank_multiplier: Optional[float] = None
    rule: str = ""
    fallback: Optional[str] = None
    refused: Optional[str] = None
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


def exact_segment_mask(layers: Sequence[int], num_layers: int, num_segments: int = NUM_SEGMENTS) -> Optional[str]:
    """The ``num_segments`` mask that selects exactly ``layers``, or None if no mask does."""
    mask, jac = best_segment_mask(layers, num_layers, num_segments)
    if mask is None or jac != 1.0 or segments_to_layers(mask, num_layers) != sorted(layers):
        return None
    return mask


def _clean(signal: Sequence[Optional[float]]) -> list[Optional[float]]:
    out: list[Optional[float]] = []
    for v in signal:
        if v is None:
            out.append(None)
            continue
        f = float(v)
        out.append(f if math.isfinite(f) else None)
    return out


def _make(
    layers: list[int],
    num_layers: int,
    signal_name: str,
    clean: list,
    rule: str,
    *,
    captured: Optional[float],
    objective: Optional[float],
    fallback: Optional[str] = None,
    refused: Optional[str] = None,
) -> Recommendation:
    near, jac = best_segment_mask(layers, num_layers)
    n = len(layers)
    return Recommendation(
        layers=layers,
        num_layers=num_layers,
        window=describe_window(num_layers, layers),
        segments=exact_segment_mask(layers, num_layers) if layers else None,
        nearest_mask=near,
        nearest_mask_jaccard=jac,
        signal_name=signal_name,
        signal=clean,
        captured_share=None if captured is None else round(captured, 6),
        layer_share=round(n / num_layers, 6) if n else None,
        objective=None if objective is None else round(objective, 6),
        rank_multiplier=round(num_layers / n, 6) if n else None,
        rule=rule,
        fallback=fallback,
        refused=refused,
    )


def _default(
    num_layers: int, signal_name: str, clean: list, rule: str, reason: str, shares: Optional[list[float]] = None
) -> Recommendation:
    try:
        layers = resolve_layers(num_layers)
    except WindowError:  # 0.2:0.8 selects nothing in a 1-layer model
        layers = list(range(num_layers))
    captured = sum(shares[i] for i in layers) if shares else None
    objective = None if captured is None else captured - len(layers) / num_layers
    return _make(layers, num_layers, signal_name, clean, rule, captured=captured, objective=objective, fallback=reason)


def search_windows(shares: Sequence[float]) -> tuple[int, int, float]:
    """``(a, b, objective)`` of the contiguous window ``[a, b]`` (inclusive) maximising
    ``sum(shares[a..b]) - (b - a + 1) / L``; ties go to the shorter, then the lower window."""
    num_layers = len(shares)
    if num_layers < 1:
        raise ValueError("search_windows: no layers; need one share per layer.")
    prefix = [0.0]
    for s in shares:
        prefix.append(prefix[-1] + float(s))
    best: tuple[float, int, int] | None = None
    for a in range(num_layers):
        for b in range(a, num_layers):
            obj = prefix[b + 1] - prefix[a] - (b - a + 1) / num_layers
            if best is None or obj > best[0] + _TIE or (abs(obj - best[0]) <= _TIE and b - a < best[2] - best[1]):
                best = (obj, a, b)
    assert best is not None
    return best[1], best[2], best[0]


def recommend_window(
    signal: Sequence[Optional[float]],
    *,
    signal_name: str = "own_output",
    min_objective: float = MIN_OBJECTIVE,
) -> Recommendation:
    """Apply the documented search to a per-layer change curve (one value per decoder layer).

    ``signal_name`` names the curve (a key of :data:`SIGNALS`); it is recorded, not interpreted.
    ``min_objective`` is the least ``captured - used`` a window must reach; below it the change
    is taken to be spread out and the paper's ``0.2:0.8`` is returned (``fallback`` set).
    """
    if signal_name not in SIGNALS:
        raise ValueError(f"signal_name={signal_name!r} is not one of {sorted(SIGNALS)}; name the per-layer signal.")
    if isinstance(min_objective, bool) or not isinstance(min_objective, (int, float)) or not 0 <= min_objective < 1:
        raise ValueError(f"min_objective={min_objective!r}: need a number in [0, 1), e.g. {MIN_OBJECTIVE}.")
    num_layers = len(signal)
    if num_layers < 1:
        raise ValueError("recommend_window: the change curve is empty; need one value per layer.")
    clean = _clean(signal)
    rule = RULE.format(min_objective=min_objective)
    missing = [i for i, v in enumerate(clean) if v is None]
    if missing:
        return _default(
            num_layers,
            signal_name,
            clean,
            rule,
            f"the {signal_name} signal is undefined at layer(s) {describe_window(num_layers, missing)}",
        )
    vals = [max(0.0, float(v)) for v in clean]  # type: ignore[arg-type]
    total = sum(vals)
    if not total > 0:
        return _default(
            num_layers, signal_name, clean, rule, f"no layer changed (the {signal_name} signal is zero everywhere)"
        )
    shares = [v / total for v in vals]
    a, b, objective = search_windows(shares)
    if objective < min_objective:
        return _default(
            num_layers,
            signal_name,
            clean,
            rule,
            f"the change is spread out: the best window {describe_window(num_layers, list(range(a, b + 1)))} holds "
            f"{sum(shares[a : b + 1]):.1%} of it on {(b - a + 1) / num_layers:.1%} of the layers "
            f"(objective {objective:.3f} < {min_objective:g})",
            shares,
        )
    layers = list(range(a, b + 1))
    return _make(layers, num_layers, signal_name, clean, rule, captured=sum(shares[a : b + 1]), objective=objective)


def default_recommendation(num_layers: int, reason: str) -> Recommendation:
    """The paper's ``0.2:0.8`` window with ``fallback = reason`` and no signal (``signal_name="none"``)."""
    return _default(num_layers, "none", [], RULE.format(min_objective=MIN_OBJECTIVE), reason)


def refused_recommendation(
    num_layers: int, signal_name: str, signal: Sequence[Optional[float]], reason: str
) -> Recommendation:
    """A recommendation that recommends nothing (``layers == []``), recording why."""
    return Recommendation(
        layers=[],
        num_layers=num_layers,
        window="",
        segments=None,
        nearest_mask=None,
        nearest_mask_jaccard=None,
        signal_name=signal_name,
        signal=_clean(signal),
        rule=RULE.format(min_objective=MIN_OBJECTIVE),
        refused=reason,
    )


def compare_windows(a: Sequence[int], b: Sequence[int]) -> dict:
    """How two recommended windows relate: Jaccard overlap, equality, shared layers."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return {
        "jaccard": round(len(sa & sb) / len(union), 6) if union else None,
        "same": sa == sb,
        "shared_layers": sorted(sa & sb),
    }
