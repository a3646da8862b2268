"""Window arithmetic: the paper's windows and rank table, properties over L = 1..128, errors."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from midblock_plugin.window import (
    WindowError,
    explicit_layers,
    fraction_to_layers,
    matched_rank,
    resolve_layers,
    segment_bounds,
    segments_to_layers,
)


# --- the paper (paper-notes.md) ------------------------------------------------------


@pytest.mark.parametrize(
    "L, first, last, count",
    [(16, 3, 11, 9), (32, 6, 24, 19), (40, 8, 31, 24), (64, 12, 50, 39)],
)
def test_paper_fraction_windows(L, first, last, count):
    layers = resolve_layers(L, window="0.2:0.8")
    assert layers == list(range(first, last + 1))
    assert len(layers) == count
    assert resolve_layers(L) == layers  # the default window is the paper's


@pytest.mark.parametrize(
    "r, L, mask, expected",
    [
        (64, 16, "01110", 113),
        (64, 32, "01110", 107),
        (64, 40, "01110", 106),
        (8, 64, "01110", 13),
        (64, 16, "01000", 341),
    ],
)
def test_paper_rank_table(r, L, mask, expected):
    n = len(resolve_layers(L, window="0.2:0.8")) if mask == "01110" else len(segments_to_layers(mask, L))
    assert matched_rank(r, L, n) == expected


def test_paper_variants_on_16_layers():
    assert segments_to_layers("11111", 16) == list(range(16))
    assert segments_to_layers("10000", 16) == [0, 1, 2]
    assert segments_to_layers("00001", 16) == [12, 13, 14, 15]
    assert segments_to_layers("01100", 16) == [3, 4, 5, 6, 7, 8]


# --- properties ------------------------------------------------------------------------

Ls = st.integers(min_value=1, max_value=128)


@settings(max_examples=300, deadline=None)
@given(L=Ls, data=st.data())
def test_fraction_window_is_floor_rule(L, data):
    ia = data.draw(st.integers(0, 99))
    ib = data.draw(st.integers(ia + 1, 100))
    a, b = ia / 100, ib / 100
    expected = list(range((ia * L) // 100, (ib * L) // 100))  # exact integer floor
    if not expected:
        with pytest.raises(WindowError, match="selects no layer"):
            fraction_to_layers(a, b, L)
    else:
        assert fraction_to_layers(a, b, L) == expected


@settings(max_examples=300, deadline=None)
@given(L=Ls, S=st.integers(1, 8))
def test_segments_partition_the_stack(L, S):
    if S > L:
        with pytest.raises(WindowError, match="segments"):
            segments_to_layers("1" * S, L)
        return
    bounds = segment_bounds(L, S)
    assert bounds[0][0] == 0 and bounds[-1][1] == L
    assert all(lo < hi for lo, hi in bounds)  # no empty segment when S <= L
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(S - 1))
    assert segments_to_layers("1" * S, L) == list(range(L))
    # each single-segment mask gives exactly its segment; together they cover every layer once
    seen = []
    for i in range(S):
        mask = "".join("1" if j == i else "0" for j in range(S))
        seen += segments_to_layers(mask, L)
    assert seen == list(range(L))


@settings(max_examples=200, deadline=None)
@given(L=Ls, data=st.data())
def test_matched_budget_never_exceeds_uniform(L, data):
    r = data.draw(st.integers(1, 256))
    n = data.draw(st.integers(1, L))
    rk = matched_rank(r, L, n)
    assert rk * n <= r * L < (rk + 1) * n  # floor(r*L/n): the largest rank within budget


@settings(max_examples=200, deadline=None)
@given(L=Ls, data=st.data())
def test_explicit_layers_roundtrip(L, data):
    chosen = sorted(set(data.draw(st.lists(st.integers(0, L - 1), min_size=1, max_size=L))))
    assert explicit_layers(chosen, L) == chosen
    assert explicit_layers(",".join(map(str, chosen)), L) == chosen
    assert explicit_layers([i - L for i in chosen], L) == chosen  # negative = from the top


def test_explicit_layer_syntax():
    assert explicit_layers("3-11", 16) == list(range(3, 12))
    assert explicit_layers("3,4,9-12", 16) == [3, 4, 9, 10, 11, 12]
    assert explicit_layers("-4--1", 16) == [12, 13, 14, 15]
    assert explicit_layers(5, 16) == [5]


# --- errors name the value, what is allowed, how to fix -----------------------------------


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"window": "0.8:0.2"}, r"window='0.8:0.2'.*0 <= a < b <= 1"),
        ({"window": "0.5:0.5"}, r"a < b"),
        ({"window": "20%-80%"}, r"not of the form 'a:b'"),
        ({"window": "0.2:1.5"}, r"b <= 1"),
        ({"window": "0.0:0.01"}, r"selects no layer"),
        ({"segments": "00000"}, r"activates no segment.*'1'"),
        ({"segments": "01x10"}, r"stray 'x'"),
        ({"segments": ""}, r"segments=''.*it is empty"),  # issue 11: empty is an error, never "the default"
        ({"layers": ""}, r"names no layer"),
        ({"window": ""}, r"window='' is not of the form"),
        ({"layers": "3-40"}, r"layer 40 is out of range.*0\.\.15"),
        ({"layers": "11-3"}, r"runs backwards"),
        ({"layers": "a-b"}, r"cannot read 'a-b'"),
        ({"layers": []}, r"names no layer"),
        ({"window": "0.2:0.8", "segments": "01110"}, r"only one of.*segments, window"),
    ],
)
def test_bad_windows(kwargs, pattern):
    if pattern is None:
        assert resolve_layers(16, **kwargs) == list(range(3, 12))
        return
    with pytest.raises(WindowError, match=pattern):
        resolve_layers(16, **kwargs)


def test_window_from_file(tmp_path):
    import json

    p = tmp_path / "analysis.json"
    p.write_text(json.dumps({"recommendation": {"layers": [2, 3, 4], "num_layers": 8}}))
    assert resolve_layers(8, window_from=str(p)) == [2, 3, 4]
    with pytest.raises(WindowError, match="computed for a 8-layer model, but this model has 16"):
        resolve_layers(16, window_from=str(p))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(WindowError, match="no 'recommendation.layers'"):
        resolve_layers(8, window_from=str(tmp_path / "bad.json"))
    with pytest.raises(WindowError, match="no such file"):
        resolve_layers(8, window_from=str(tmp_path / "missing.json"))
