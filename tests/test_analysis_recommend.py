"""The window search on synthetic signals whose right answer is known, and its hand-off to ``--window-from``."""

from __future__ import annotations

import json
import random

import pytest

from midblock_plugin.analysis.recommend import (
    SIGNALS,
    best_segment_mask,
    compare_windows,
    default_recommendation,
    exact_segment_mask,
    recommend_window,
    refused_recommendation,
    search_windows,
)
from midblock_plugin.window import describe_window, resolve_layers, segments_to_layers


def _block(num_layers, layers, high=1.0, low=0.0):
    return [high if i in layers else low for i in range(num_layers)]


def test_only_layers_3_to_5_change_gives_3_to_5():
    rec = recommend_window(_block(12, {3, 4, 5}), signal_name="own_output")
    assert rec.layers == [3, 4, 5] and rec.window == "3-5"
    assert rec.captured_share == 1.0 and rec.layer_share == pytest.approx(3 / 12, abs=1e-6)
    assert rec.objective == pytest.approx(1 - 3 / 12, abs=1e-6)
    assert rec.rank_multiplier == 4.0  # rank floor(r * 12 / 3) per window layer
    assert rec.fallback is None and rec.refused is None and rec.signal_name == "own_output"
    assert rec.segments is None  # no 5-segment mask is exactly layers 3-5 of 12


@pytest.mark.parametrize("mask", ["01000", "01100", "00100", "00110", "01110", "10000", "00001"])
def test_a_signal_concentrated_on_a_paper_mask_is_found_exactly(mask):
    num_layers = 30
    layers = segments_to_layers(mask, num_layers)
    rng = random.Random(0)
    # the mask's layers change ~10-20x more than the rest, with noise everywhere
    signal = [(1.0 if i in layers else 0.05) * (1 + 0.3 * rng.random()) for i in range(num_layers)]
    rec = recommend_window(signal, signal_name="own_output")
    assert rec.layers == layers, (mask, rec.window)
    assert rec.segments == mask and rec.nearest_mask == mask and rec.nearest_mask_jaccard == 1.0


def test_the_paper_7b_mask_01000_at_L30_is_layers_6_to_11():
    rec = recommend_window(_block(30, set(range(6, 12)), high=0.4, low=0.02), signal_name="weight")
    assert rec.layers == list(range(6, 12)) and rec.segments == "01000"


def test_start_and_end_are_free_including_the_bottom_and_the_top_layer():
    assert recommend_window(_block(16, {0, 1})).layers == [0, 1]
    assert recommend_window(_block(16, {15})).layers == [15]
    assert recommend_window(_block(16, {13, 14, 15})).layers == [13, 14, 15]


@pytest.mark.parametrize("signal", [[0.0] * 12, [0.01] * 12, [None] * 12, [0.0] * 5 + [float("nan")] * 7])
def test_flat_zero_or_undefined_signal_falls_back_to_the_paper_default(signal):
    rec = recommend_window(signal, signal_name="own_output")
    assert rec.layers == resolve_layers(12) and rec.fallback
    assert rec.refused is None


def test_a_noisy_flat_signal_is_not_concentrated_enough():
    rng = random.Random(1)
    rec = recommend_window([1.0 + 0.1 * rng.uniform(-1, 1) for _ in range(30)], signal_name="own_output")
    assert rec.fallback and "spread out" in rec.fallback
    assert rec.layers == resolve_layers(30) and rec.objective is not None and rec.objective < 0.1


def test_min_objective_sets_how_concentrated_the_change_must_be():
    signal = [1.0] * 10 + [1.5] * 10  # top half holds 60% of the change on 50% of the layers: objective 0.1
    assert recommend_window(signal, min_objective=0.05).layers == list(range(10, 20))
    assert recommend_window(signal, min_objective=0.2).fallback is not None


def test_a_below_average_layer_inside_is_kept_when_its_neighbours_make_up_for_it():
    signal = [0.0] * 4 + [1.0, 1.0, 0.02, 1.0, 1.0] + [0.0] * 7
    assert recommend_window(signal).layers == list(range(4, 9))
    # but a long gap splits the change: the larger part wins
    signal = [0.0] * 2 + [1.0] * 3 + [0.0] * 6 + [1.0] * 4 + [0.0]
    assert recommend_window(signal).layers == [11, 12, 13, 14]


def test_search_windows_is_the_exhaustive_maximum_with_documented_ties():
    rng = random.Random(2)
    for _ in range(50):
        num_layers = rng.randint(1, 20)
        shares = [rng.random() for _ in range(num_layers)]
        total = sum(shares)
        shares = [s / total for s in shares]
        a, b, obj = search_windows(shares)
        brute = max(
            sum(shares[i : j + 1]) - (j - i + 1) / num_layers for i in range(num_layers) for j in range(i, num_layers)
        )
        assert obj == pytest.approx(brute, abs=1e-12)
        assert obj == pytest.approx(sum(shares[a : b + 1]) - (b - a + 1) / num_layers, abs=1e-12)
    # ties: equal objective -> the shorter window, then the lower one
    assert search_windows([0.5, 0.0, 0.0, 0.5]) == (0, 0, 0.25)


def test_negative_values_are_clipped_not_rewarded():
    rec = recommend_window([-0.5, -0.5, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert rec.layers == [3, 4]


def test_segments_is_exact_or_null():
    assert exact_segment_mask(list(range(6, 12)), 30) == "01000"
    assert exact_segment_mask(list(range(6, 13)), 30) is None
    rec = recommend_window(_block(30, set(range(6, 13))))
    assert rec.layers == list(range(6, 13)) and rec.segments is None and rec.nearest_mask == "01000"


@pytest.mark.parametrize("num_layers", [1, 2])
def test_tiny_depths_get_a_valid_window(num_layers):
    rec = recommend_window([0.0, 0.5][:num_layers])
    assert rec.layers and all(0 <= i < num_layers for i in rec.layers)
    assert rec.segments is None


def test_best_segment_mask_matches_exact_masks_and_prefers_overlap():
    for mask in ("01110", "01100", "00010", "10000", "11111"):
        layers = segments_to_layers(mask, 32)
        assert best_segment_mask(layers, 32) == (mask, 1.0)
    mask, jac = best_segment_mask(list(range(6, 23)), 32)  # 6..22 vs 01110 = 6..24
    assert mask == "01110" and 0.8 < jac < 1.0
    assert best_segment_mask([0, 1], 4) == (None, None)


def test_refused_and_default_recommendations():
    ref = refused_recommendation(10, "own_output", [0.1] * 10, "window-tuned")
    assert ref.layers == [] and ref.refused == "window-tuned" and ref.window == ""
    dft = default_recommendation(10, "no signal")
    assert dft.layers == resolve_layers(10) and dft.signal_name == "none" and dft.fallback == "no signal"


def test_compare_windows():
    assert compare_windows([1, 2, 3], [2, 3, 4]) == {"jaccard": 0.5, "same": False, "shared_layers": [2, 3]}
    assert compare_windows([1], [1])["same"] is True


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="signal_name"):
        recommend_window([0.1, 0.2], signal_name="magic")
    with pytest.raises(ValueError, match="empty"):
        recommend_window([])
    with pytest.raises(ValueError, match="min_objective"):
        recommend_window([0.1, 0.2], min_objective=1.5)
    assert set(SIGNALS) >= {"own_output", "weight", "gradient_probe", "inherited_cka"}


def test_recommendation_round_trips_through_window_from(tmp_path):
    rec = recommend_window([0.0] * 8 + [0.3] * 4)
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps({"recommendation": rec.to_dict()}))
    assert resolve_layers(12, window_from=str(path)) == rec.layers == list(range(8, 12))
    for key in ("layers", "num_layers", "window", "segments", "rule", "signal_name", "captured_share", "objective"):
        assert key in rec.to_dict()
    assert rec.window == describe_window(12, rec.layers)
    with pytest.raises(ValueError, match="12-layer"):
        resolve_layers(16, window_from=str(path))
