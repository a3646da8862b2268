"""The documented window rule and its hand-off to ``--window-from``."""

from __future__ import annotations

import json
import math

import pytest

from midblock_plugin.analysis.recommend import best_segment_mask, recommend_window
from midblock_plugin.window import describe_window, resolve_layers, segments_to_layers


@pytest.mark.parametrize("num_layers,step", [(10, 8), (16, 13), (32, 24), (32, 29), (40, 20)])
def test_step_in_change_puts_window_top_at_the_step(num_layers, step):
    signal = [0.001 + 0.0001 * i for i in range(step)] + [0.05 + 0.001 * i for i in range(num_layers - step)]
    rec = recommend_window(signal, basis="cka")
    lo = math.floor(0.2 * num_layers)
    assert rec.change_point == step
    assert rec.layers == list(range(lo, step))
    assert rec.window == describe_window(num_layers, rec.layers)
    assert rec.fallback is None and rec.num_layers == num_layers


def test_paper_shaped_profile_gives_the_paper_window():
    # CKA > 0.98 over most of the depth, ~0.94 in the last 20-25% (paper-notes.md)
    num_layers = 16
    cka = [0.995] * 10 + [0.99, 0.985, 0.96, 0.945, 0.94, 0.935]
    rec = recommend_window([1 - c for c in cka], basis="cka")
    assert rec.layers == resolve_layers(num_layers, window="0.2:0.8")
    assert rec.segments == "01110" and rec.segments_jaccard == 1.0


def test_flat_or_undefined_curve_falls_back_to_paper_default():
    for signal in ([0.0] * 12, [0.01] * 12, [0.0] * 5 + [float("nan")] * 7, [None] * 12):
        rec = recommend_window(signal, basis="cka")
        assert rec.layers == resolve_layers(12)
        assert rec.fallback and rec.change_point is None


def test_a_changed_layer_next_to_exactly_stable_ones_joins_the_top_block():
    rec = recommend_window([0.0] * 8 + [0.034, 0.084], basis="cka")
    assert rec.layers == list(range(2, 8)) and rec.change_point == 8


def test_a_steady_ramp_keeps_at_least_the_lower_half():
    rec = recommend_window([0.01 * i for i in range(20)], basis="cka")
    assert rec.change_point == 10 and rec.layers == list(range(4, 10))


def test_top_block_must_change_clearly_more():
    # a decreasing curve has no "top block" that changes more
    rec = recommend_window([0.1 - 0.005 * i for i in range(16)], basis="cka")
    assert rec.fallback is not None and rec.layers == resolve_layers(16)


def test_single_model_basis_never_widens_past_80_percent():
    num_layers = 20
    signal = [0.01] * 19 + [0.5]  # only the very last layer stands out
    two = recommend_window(signal, basis="cka")
    one = recommend_window(signal, basis="adjacent_cka")
    assert two.layers == list(range(4, 19))
    assert max(one.layers) < math.floor(0.8 * num_layers)
    assert one.layers == resolve_layers(num_layers)
    narrower = recommend_window([0.01] * 12 + [0.3] * 8, basis="adjacent_cka")
    assert narrower.layers == list(range(4, 12))


@pytest.mark.parametrize("num_layers", [1, 2])
def test_tiny_depths_get_a_valid_window(num_layers):
    rec = recommend_window([0.0, 0.5][:num_layers], basis="cka")
    assert rec.layers and all(0 <= i < num_layers for i in rec.layers)
    assert rec.segments is None


def test_best_segment_mask_matches_exact_masks_and_prefers_overlap():
    for mask in ("01110", "01100", "00010", "10000", "11111"):
        layers = segments_to_layers(mask, 32)
        assert best_segment_mask(layers, 32) == (mask, 1.0)
    mask, jac = best_segment_mask(list(range(6, 23)), 32)  # 6..22 vs 01110 = 6..24
    assert mask == "01110" and 0.8 < jac < 1.0
    assert best_segment_mask([0, 1], 4) == (None, None)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="basis"):
        recommend_window([0.1, 0.2], basis="magic")
    with pytest.raises(ValueError, match="empty"):
        recommend_window([], basis="cka")


def test_recommendation_round_trips_through_window_from(tmp_path):
    rec = recommend_window([0.0] * 8 + [0.3] * 4, basis="cka")
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps({"recommendation": rec.to_dict()}))
    assert resolve_layers(12, window_from=str(path)) == rec.layers == list(range(2, 8))
    for key in ("layers", "num_layers", "window", "segments", "rule"):
        assert key in rec.to_dict()
    with pytest.raises(ValueError, match="12-layer"):
        resolve_layers(16, window_from=str(path))
