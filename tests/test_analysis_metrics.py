"""Analytic properties of the layer-wise metrics and the streaming accumulators."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from midblock_plugin.analysis.metrics import (
    CrossStats,
    MomentStats,
    cka_from_stats,
    curvature,
    dataset_entropy,
    effective_rank,
    linear_cka,
    linear_cka_gram,
    marchenko_pastur_median,
    mean_pool,
    mean_shift,
    prompt_entropy,
    row_cosine,
    spectral_snr,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthogonal(d: int, g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _stream(x: torch.Tensor, y: torch.Tensor, sizes, dtype=torch.float64):
    mx, my, cross = MomentStats(x.shape[1], dtype=dtype), MomentStats(y.shape[1], dtype=dtype), CrossStats()
    start = 0
    for size in sizes:
        xb, yb = x[start : start + size], y[start : start + size]
        if len(xb) == 0:
            break
        mx.update(xb)
        my.update(yb)
        cross.update(xb, yb, mx, my)
        start += size
    assert start >= x.shape[0]
    return mx, my, cross


# --------------------------------------------------------------------------- CKA


def test_cka_of_identical_states_is_one_and_forms_agree():
    x = torch.randn(40, 12, generator=_gen(0), dtype=torch.float64)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka_gram(x, x) == pytest.approx(1.0, abs=1e-12)
    y = torch.randn(40, 7, generator=_gen(1), dtype=torch.float64)
    assert linear_cka(x, y) == pytest.approx(linear_cka_gram(x, y), abs=1e-10)
    assert linear_cka(x, y) < 0.9  # independent noise is not similar


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(8, 60),
    d=st.integers(2, 24),
    scale=st.floats(1e-3, 1e3),
    offset=st.floats(-50, 50),
)
def test_cka_invariant_to_orthogonal_transform_isotropic_scaling_and_translation(seed, n, d, scale, offset):
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d, d, generator=g, dtype=torch.float64) + 0.3 * torch.randn(
        n, d, generator=g, dtype=torch.float64
    )
    ref = linear_cka(x, y)
    q = _orthogonal(d, g)
    assert linear_cka(x @ q, y) == pytest.approx(ref, rel=1e-8, abs=1e-10)
    assert linear_cka(x, scale * y) == pytest.approx(ref, rel=1e-8, abs=1e-10)
    assert linear_cka(x + offset, y) == pytest.approx(ref, rel=1e-8, abs=1e-10)
    # the streamed form sees the same invariances
    mx, my, cross = _stream(x @ q, scale * y + offset, [7] * (n // 7 + 1))
    assert cka_from_stats(mx, my, cross) == pytest.approx(ref, rel=1e-7, abs=1e-9)


def test_cka_is_not_invariant_to_anisotropic_scaling():
    g = _gen(3)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    stretch = torch.diag(torch.tensor([100.0, 1, 1, 1, 1, 1], dtype=torch.float64))
    assert linear_cka(x, x @ stretch) < 0.5


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 80), cuts=st.lists(st.integers(1, 17), min_size=1, max_size=12))
def test_streamed_moments_equal_whole_matrix_metrics_for_any_batching(seed, n, cuts):
    g = _gen(seed)
    d = 9
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 5
    y = torch.tanh(x @ torch.randn(d, d, generator=g, dtype=torch.float64))
    sizes = cuts * (n // max(1, sum(cuts)) + 2)
    mx, my, cross = _stream(x, y, sizes)
    assert cka_from_stats(mx, my, cross) == pytest.approx(linear_cka(x, y), rel=1e-9, abs=1e-12)
    assert cross.mean_cosine() == pytest.approx(float(row_cosine(x, y).mean()), rel=1e-9)
    assert mean_shift(mx, my) == pytest.approx(float((y.mean(0) - x.mean(0)).norm()), rel=1e-9)
    assert mx.effective_rank(normalize=False) == pytest.approx(effective_rank(x), rel=1e-7)
    assert mx.effective_rank(normalize=True) == pytest.approx(effective_rank(x, normalize=True), rel=1e-7)
    if n >= 2:
        assert mx.dataset_entropy() == pytest.approx(dataset_entropy(x), rel=1e-7, abs=1e-9)


def test_float32_accumulator_stays_accurate_with_a_large_common_offset():
    g = _gen(5)
    x = torch.randn(400, 16, generator=g, dtype=torch.float64) + 1e4  # LLM-like outlier offset
    y = x + 0.5 * torch.randn(400, 16, generator=g, dtype=torch.float64)
    mx, my, cross = _stream(x, y, [32] * 13, dtype=torch.float32)
    assert cka_from_stats(mx, my, cross) == pytest.approx(linear_cka(x, y), abs=1e-4)


def test_identical_streams_give_cka_one_cosine_one_shift_zero():
    x = torch.randn(30, 5, generator=_gen(6))
    mx, my, cross = _stream(x, x.clone(), [8, 8, 8, 8])
    assert cka_from_stats(mx, my, cross) == pytest.approx(1.0, abs=1e-12)
    assert cross.mean_cosine() == pytest.approx(1.0, abs=1e-6)
    assert mean_shift(mx, my) == pytest.approx(0.0, abs=1e-12)


def test_moment_stats_memory_does_not_grow_with_rows():
    small, large = MomentStats(8), MomentStats(8)
    small.update(torch.randn(4, 8))
    for _ in range(50):
        large.update(torch.randn(64, 8))
    size = lambda m: sum(t.numel() for t in (m.shift, m.sum, m.gram, m.norm_gram))  # noqa: E731
    assert size(small) == size(large) == 8 + 8 + 64 + 64
    with pytest.raises(ValueError, match="width 8"):
        small.update(torch.randn(2, 9))


# --------------------------------------------------------------------------- rank and entropy


@pytest.mark.parametrize("k", [1, 3, 7])
def test_effective_rank_of_rank_k_matrix_is_k(k):
    g = _gen(k)
    n, d = 60, 20
    u = _orthogonal(n, g)[:, :k]
    v = _orthogonal(d, g)[:, :k]
    x = u @ v.T * 4.0  # k equal singular values
    assert effective_rank(x) == pytest.approx(k, rel=1e-6)
    assert effective_rank(x, normalize=True) == pytest.approx(k / d, rel=1e-6)
    m = MomentStats(d)
    for chunk in x.split(13):
        m.update(chunk)
    assert m.effective_rank(normalize=False) == pytest.approx(k, rel=1e-6)
    # a generic (unequal spectrum) rank-k matrix: at most k, and not far below
    y = torch.randn(n, k, generator=g, dtype=torch.float64) @ torch.randn(k, d, generator=g, dtype=torch.float64)
    assert 0.5 * k <= effective_rank(y) <= k + 1e-6


def test_dataset_entropy_bounds():
    eye = torch.eye(10, dtype=torch.float64)
    assert dataset_entropy(eye) == pytest.approx(1.0, abs=1e-9)  # orthonormal rows: maximal
    same = torch.ones(10, 4, dtype=torch.float64)
    assert dataset_entropy(same) == pytest.approx(0.0, abs=1e-9)  # one direction: minimal
    assert dataset_entropy(3.0 * eye) == pytest.approx(1.0, abs=1e-9)  # row norms do not matter


def test_prompt_entropy_extremes_and_padding_invariance():
    d = 16
    eye = torch.eye(d)[:6]  # 6 orthogonal tokens
    same = torch.ones(6, d)
    h = torch.stack([eye, same])
    mask = torch.ones(2, 6, dtype=torch.long)
    pe = prompt_entropy(h, mask)
    assert pe[0].item() == pytest.approx(1.0, abs=1e-5)
    assert pe[1].item() == pytest.approx(0.0, abs=1e-5)
    # a sequence padded with junk gives the same value as on its own
    g = _gen(9)
    seq = torch.randn(5, d, generator=g)
    padded = torch.cat([seq, 100 * torch.randn(3, d, generator=g)])
    both = torch.stack([padded, torch.cat([seq, seq[:3]])])
    m = torch.tensor([[1] * 5 + [0] * 3, [1] * 8])
    alone = prompt_entropy(seq[None], torch.ones(1, 5))
    assert prompt_entropy(both, m)[0].item() == pytest.approx(alone.item(), abs=1e-6)
    assert math.isnan(prompt_entropy(seq[None, :1], torch.ones(1, 1))[0].item())  # one token: undefined


def test_prompt_entropy_uses_d_when_tokens_exceed_width():
    g = _gen(10)
    h = torch.randn(1, 40, 4, generator=g)  # T > D: normalised by log(D)
    val = prompt_entropy(h, torch.ones(1, 40)).item()
    assert 0.8 < val <= 1.0 + 1e-6


def test_curvature_straight_line_zero_and_reversal_one():
    v = torch.randn(8, generator=_gen(13))
    t = torch.arange(6, dtype=torch.float32)[:, None]
    line = t * v
    zigzag = torch.stack([v * (i % 2) for i in range(6)])
    h = torch.stack([line, zigzag])
    c = curvature(h, torch.ones(2, 6))
    assert c[0].item() == pytest.approx(0.0, abs=1e-6)
    assert c[1].item() == pytest.approx(1.0, abs=1e-6)
    right_angles = torch.cat([torch.zeros(1, 8), torch.eye(8)[:5].cumsum(0)])  # steps along e0, e1, ...
    assert curvature(right_angles[None], torch.ones(1, 6))[0].item() == pytest.approx(0.5, abs=1e-6)
    assert math.isnan(curvature(line[None, :2], torch.ones(1, 2))[0].item())


def test_mean_pool_ignores_padded_positions():
    h = torch.randn(2, 4, 3)
    m = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    junk = h.clone()
    junk[0, 2:] = 1e6
    assert torch.allclose(mean_pool(junk, m), mean_pool(h, m))
    assert torch.allclose(mean_pool(h, m)[0], h[0, :2].mean(0))


def test_marchenko_pastur_median_matches_known_value_and_simulation():
    assert marchenko_pastur_median(1.0) == pytest.approx(0.6528, abs=2e-4)  # Gavish & Donoho (2014)
    x = torch.randn(300, 1200, generator=_gen(12), dtype=torch.float64)
    empirical = float(torch.linalg.eigvalsh(x @ x.T / 1200).median())
    assert marchenko_pastur_median(0.25) == pytest.approx(empirical, abs=0.02)


@pytest.mark.parametrize("shape", [(64, 48), (64, 256), (256, 64)])
def test_spectral_snr_separates_signal_from_noise(shape):
    g = _gen(11)
    noise = torch.randn(*shape, generator=g)
    direction = torch.randn(shape[0], 3, generator=g) @ torch.randn(3, shape[1], generator=g) / shape[1] ** 0.5
    values = [spectral_snr(a * direction + noise) for a in (0.0, 8.0, 30.0)]
    assert values[0] < 0.15  # pure noise: (almost) nothing above the bulk edge
    assert values[0] < values[1] < values[2]  # more low-rank signal, higher SNR
    assert math.isfinite(values[2])
    assert spectral_snr(5 * (8.0 * direction + noise)) == pytest.approx(values[1], rel=1e-4)  # scale-free
    assert math.isnan(spectral_snr(torch.randn(5)))
