"""Pure tensor math of the layer-wise metrics: no model, tokenizer or file code here.

Definitions follow Zhao et al., "A Layer-wise Analysis of Supervised Fine-Tuning"
(ACL 2026); see ``docs/analysis.md``. Two families live here:

* reference forms that take whole matrices (``linear_cka``, ``effective_rank``, ...),
  used by the tests and the benchmark, and the N x N Gram form of CKA the authors used
  (``linear_cka_gram``);
* streaming accumulators (:class:`MomentStats`, :class:`CrossStats`) that see the
  mean-pooled N x D states batch by batch and keep only D x D matrices, so memory does
  not grow with the number of prompts. Their results equal the reference forms up to
  floating-point error.

>>> import torch
>>> x = torch.randn(50, 8, dtype=torch.float64)
>>> round(linear_cka(x, 3.0 * x), 6)
1.0
>>> mx, my, cross = MomentStats(8), MomentStats(8), CrossStats()
>>> for chunk in x.split(16):
...     mx.update(chunk); my.update(-chunk); cross.update(chunk, -chunk, mx, my)
>>> round(cka_from_stats(mx, my, cross), 6)
1.0
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Optional

import torch


_EPS = 1e-12


# --------------------------------------------------------------------------- helpers


def _entropy_of_spectrum(eigs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of non-negative eigenvalues normalised to sum 1, over the last dim."""
    eigs = eigs.clamp_min(0)
    total = eigs.sum(-1, keepdim=True)
    p = eigs / total.clamp_min(_EPS)
    return -(torch.where(p > 0, p * torch.log(p.clamp_min(_EPS)), torch.zeros_like(p))).sum(-1)


#: Symmetric matrices up to this size are decomposed single-threaded on CPU: batched small
#: LAPACK calls gain nothing from threads, and under CPU contention the thread pool made
#: them up to 100x slower (measured on a loaded 2-core machine).
_SINGLE_THREAD_MAX = 512


def eigvalsh(mat: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.eigvalsh`` that runs small CPU problems on one thread."""
    if mat.device.type != "cpu" or mat.shape[-1] > _SINGLE_THREAD_MAX or torch.get_num_threads() == 1:
        return torch.linalg.eigvalsh(mat)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigvalsh(mat)
    finally:
        torch.set_num_threads(threads)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states of each sequence over its attention mask (float32, B x D)."""
    m = mask.to(device=hidden.device, dtype=torch.float32).unsqueeze(-1)
    summed = (hidden.float() * m).sum(1)
    return summed / m.sum(1).clamp_min(1.0)


def row_cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of paired rows of two N x D matrices (N values)."""
    num = (x * y).sum(-1)
    den = x.norm(dim=-1) * y.norm(dim=-1)
    return num / den.clamp_min(_EPS)


# --------------------------------------------------------------------------- reference forms


def _centered(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x - x.mean(0, keepdim=True)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two N x D representations from D x D cross-covariances.

    ``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F * ||Yc^T Yc||_F)`` with column-centred X, Y; equal
    to the N x N HSIC form (:func:`linear_cka_gram`) but O(D^2) in memory.
    """
    xc, yc = _centered(x), _centered(y)
    num = (xc.T @ yc).pow(2).sum()
    den = (xc.T @ xc).norm() * (yc.T @ yc).norm()
    return float(num / den) if den > 0 else float("nan")


def linear_cka_gram(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA in the authors' N x N form: HSIC of the centred Gram matrices
    ``K = H X X^T H`` and ``L = H Y Y^T H`` (computed as ``Xc Xc^T``; O(N^2) memory)."""
    xc, yc = _centered(x), _centered(y)
    kc = xc @ xc.T
    lc = yc @ yc.T
    hsic_xy = (kc * lc).sum()
    den = torch.sqrt((kc * kc).sum() * (lc * lc).sum())
    return float(hsic_xy / den) if den > 0 else float("nan")


def effective_rank(x: torch.Tensor, normalize: bool = False) -> float:
    """exp(entropy of s^2 / sum s^2) over the singular values s of an N x D matrix.

    A rank-k matrix with equal singular values gives exactly k. With ``normalize`` the
    value is divided by ``min(N, D)`` (the paper's scale-free form, in (0, 1]).
    """
    s = torch.linalg.svdvals(x.double())
    value = float(torch.exp(_entropy_of_spectrum(s.pow(2))))
    return value / min(x.shape) if normalize else value


def dataset_entropy(x: torch.Tensor) -> float:
    """Matrix entropy of the Gram matrix of the L2-normalised rows of an N x D matrix,
    divided by ``log(min(N, D))`` (in [0, 1])."""
    z = x.double()
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    eigs = eigvalsh(z.T @ z if z.shape[0] > z.shape[1] else z @ z.T)
    denom = math.log(min(x.shape))
    return float(_entropy_of_spectrum(eigs)) / denom if denom > 0 else float("nan")


# --------------------------------------------------------------------------- token-level (per sequence)


def prompt_entropy(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence prompt entropy of a batch of token states (B values, NaN for < 2 tokens).

    For each sequence: Gram matrix of its L2-normalised token states, eigenvalues
    normalised to sum 1, Shannon entropy, divided by ``log(min(T, D))``. Padded positions
    (``mask == 0``) are zero rows, which add only zero eigenvalues. States are normalised
    in float32 (also for bf16 models); the eigenvalues are taken in float64.
    """
    m = mask.to(device=hidden.device, dtype=torch.bool)
    z = hidden.float()
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    z = z * m.unsqueeze(-1)
    t, d = z.shape[-2], z.shape[-1]
    gram = z @ z.transpose(-1, -2) if t <= d else z.transpose(-1, -2) @ z
    eigs = eigvalsh(gram.double())
    ent = _entropy_of_spectrum(eigs)
    lengths = m.sum(-1).double()
    denom = torch.log(torch.minimum(lengths, torch.full_like(lengths, float(d))))
    out = ent / denom.clamp_min(_EPS)
    return torch.where(lengths >= 2, out, torch.full_like(out, float("nan"))).float()


def curvature(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence curvature: mean angle between consecutive token-difference vectors,
    divided by pi (B values in [0, 1], NaN for sequences with < 3 tokens)."""
    m = mask.to(device=hidden.device, dtype=torch.bool)
    h = hidden.float()
    diff = h[:, 1:] - h[:, :-1]
    valid_d = m[:, 1:] & m[:, :-1]
    if diff.shape[1] < 2:
        return torch.full((h.shape[0],), float("nan"), device=h.device)
    unit = diff / diff.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    a, b = unit[:, :-1], unit[:, 1:]
    # 2 atan2(|a - b|, |a + b|) is accurate at every angle (arccos of a float32 cosine is not near 0 and pi)
    angle = 2 * torch.atan2((a - b).norm(dim=-1), (a + b).norm(dim=-1)) / math.pi
    valid = (valid_d[:, :-1] & valid_d[:, 1:]).float()
    count = valid.sum(-1)
    out = (angle * valid).sum(-1) / count.clamp_min(1.0)
    return torch.where(count > 0, out, torch.full_like(out, float("nan"))).float()


# --------------------------------------------------------------------------- weights


@functools.lru_cache(maxsize=256)
def marchenko_pastur_median(beta: float) -> float:
    """Median of the Marchenko-Pastur law with aspect ratio ``beta`` in (0, 1] and unit variance
    (the eigenvalue distribution of ``X X^T / m`` for an n x m noise matrix, ``beta = n / m``)."""
    lo, hi = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2
    # lambda = lo + (hi - lo) (1 - cos t) / 2 removes the square-root edges of the density
    t = torch.linspace(0.0, math.pi, 20001, dtype=torch.float64)
    lam = lo + (hi - lo) * (1 - torch.cos(t)) / 2
    half = (hi - lo) / 2
    integrand = (half * torch.sin(t)) ** 2 / (2 * math.pi * beta * lam.clamp_min(1e-300))
    integrand[0] = half / (math.pi * beta) if lo == 0 else 0.0  # the t -> 0 limit
    cdf = torch.cumulative_trapezoid(integrand, t)
    cdf = cdf / cdf[-1]
    idx = int(torch.searchsorted(cdf, torch.tensor(0.5, dtype=torch.float64)))
    return float(lam[idx + 1])


def spectral_snr(weight: torch.Tensor) -> float:
    """Spectral signal-to-noise ratio of a weight matrix, in the spirit of Spectrum (Hartford et al., 2024).

    Singular values above the Marchenko-Pastur bulk edge ``sigma * (sqrt(n) + sqrt(m))`` count
    as signal, the rest as noise; returns ``sum(signal) / sum(noise)`` (0 for pure noise, large
    for a strong low-rank structure; independent of the weight scale). The noise level
    ``sigma`` is estimated from the median singular value against the Marchenko-Pastur
    median (Gavish & Donoho, 2014). Spectrum estimates sigma from the inter-quartile range
    of the singular values instead, which for rectangular matrices can put every singular
    value above the edge (an infinite ratio), and divides by the largest singular value,
    which makes it depend on the weight scale.
    """
    w = weight.detach().float()
    if w.ndim != 2 or min(w.shape) < 2:
        return float("nan")
    s = torch.linalg.svdvals(w).double()
    n, m = sorted(w.shape)
    sigma = float(s.median()) / math.sqrt(m * marchenko_pastur_median(n / m))
    edge = sigma * (math.sqrt(n) + math.sqrt(m))
    signal = s[s > edge].sum()
    noise = s[s <= edge].sum()
    return float(signal / noise) if noise > 0 else float("inf")


def relative_change(sq_delta: float, sq_base: float) -> float:
    """``sqrt(sum ||W_t - W_b||_F^2) / sqrt(sum ||W_b||_F^2)`` from accumulated squares."""
    if sq_base <= 0:
        return float("nan") if sq_delta > 0 else 0.0
    return math.sqrt(sq_delta / sq_base)


# --------------------------------------------------------------------------- streaming accumulators


@dataclass
class MomentStats:
    """Streamed first and second moments of the rows of an N x D matrix (O(D^2) memory).

    Rows are shifted by the mean of the first batch before they are accumulated (the
    "shifted data" algorithm), which keeps the centring accurate even with large
    common offsets in the states and a float32 accumulator.

    Attributes:
        dim: D, the row width.
        dtype: accumulator dtype (float64 by default).
        device: where the D x D matrices live.
        track_normalized: also accumulate the Gram of L2-normalised rows (dataset entropy).
    """

    dim: int
    dtype: torch.dtype = torch.float64
    device: Optional[torch.device | str] = None
    track_normalized: bool = True
    n: int = 0
    shift: Optional[torch.Tensor] = field(default=None, repr=False)
    sum: Optional[torch.Tensor] = field(default=None, repr=False)
    gram: Optional[torch.Tensor] = field(default=None, repr=False)
    norm_gram: Optional[torch.Tensor] = field(default=None, repr=False)

    def _alloc(self, x: torch.Tensor) -> None:
        dev = self.device if self.device is not None else x.device
        self.shift = x.to(device=dev, dtype=self.dtype).mean(0)
        self.sum = torch.zeros(self.dim, dtype=self.dtype, device=dev)
        self.gram = torch.zeros(self.dim, self.dim, dtype=self.dtype, device=dev)
        if self.track_normalized:
            self.norm_gram = torch.zeros(self.dim, self.dim, dtype=self.dtype, device=dev)

    def shifted(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``x`` minus the stored shift, in the accumulator dtype/device."""
        return x.to(device=self.shift.device, dtype=self.dtype) - self.shift

    def update(self, x: torch.Tensor) -> None:
        """Add a batch of rows (B x D)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MomentStats.update: expected rows of width {self.dim}, got shape {tuple(x.shape)}")
        if self.shift is None:
            self._alloc(x)
        xs = self.shifted(x)
        self.n += x.shape[0]
        self.sum += xs.sum(0)
        self.gram.addmm_(xs.T, xs)
        if self.track_normalized:
            z = x.to(device=self.shift.device, dtype=self.dtype)
            z = z / z.norm(dim=-1, keepdim=True).clamp_min(_EPS)
            self.norm_gram.addmm_(z.T, z)

    def mean(self) -> torch.Tensor:
        """Mean row (D), float64."""
        return (self.shift + self.sum / max(self.n, 1)).double()

    def centered_gram(self) -> torch.Tensor:
        """``Xc^T Xc`` (D x D, float64) with the column mean removed."""
        s = self.sum.double()
        return self.gram.double() - torch.outer(s, s) / max(self.n, 1)

    def raw_gram(self) -> torch.Tensor:
        """``X^T X`` (D x D, float64) of the uncentred rows."""
        c, s = self.shift.double(), self.sum.double()
        return self.gram.double() + torch.outer(c, s) + torch.outer(s, c) + self.n * torch.outer(c, c)

    def effective_rank(self, normalize: bool = True) -> float:
        """Effective rank of the accumulated N x D matrix (eigenvalues of X^T X are s^2)."""
        if self.n == 0:
            return float("nan")
        eigs = eigvalsh(self.raw_gram())
        value = float(torch.exp(_entropy_of_spectrum(eigs)))
        return value / min(self.n, self.dim) if normalize else value

    def dataset_entropy(self) -> float:
        """Dataset entropy of the accumulated rows (the nonzero spectrum of the N x N Gram of
        normalised rows equals that of the D x D ``Z^T Z``)."""
        if not self.track_normalized:
            raise ValueError("MomentStats was built with track_normalized=False; dataset entropy needs it")
        denom = math.log(min(self.n, self.dim)) if self.n else 0.0
        if denom <= 0:
            return float("nan")
        eigs = eigvalsh(self.norm_gram.double())
        return float(_entropy_of_spectrum(eigs)) / denom


@dataclass
class CrossStats:
    """Streamed cross moments of paired rows (x_i, y_i): ``sum (x - c_x)(y - c_y)^T`` and the
    sum of row cosines. Shifts come from the two :class:`MomentStats` the rows also feed,
    so call :meth:`update` after updating those with the same batch."""

    n: int = 0
    cos_sum: float = 0.0
    cross: Optional[torch.Tensor] = field(default=None, repr=False)

    def update(self, x: torch.Tensor, y: torch.Tensor, mx: MomentStats, my: MomentStats) -> None:
        """Add a batch of paired rows."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"CrossStats.update: {x.shape[0]} rows of x but {y.shape[0]} rows of y")
        xs, ys = mx.shifted(x), my.shifted(y)
        if self.cross is None:
            self.cross = torch.zeros(xs.shape[1], ys.shape[1], dtype=xs.dtype, device=xs.device)
        self.cross.addmm_(xs.T, ys)
        self.cos_sum += float(row_cosine(x.double(), y.to(x.device).double()).sum())
        self.n += x.shape[0]

    def mean_cosine(self) -> float:
        """Mean cosine similarity of the paired rows."""
        return self.cos_sum / self.n if self.n else float("nan")


def cka_from_stats(mx: MomentStats, my: MomentStats, cross: CrossStats) -> float:
    """Linear CKA from streamed moments: ``||C_xy||_F^2 / (||C_xx||_F ||C_yy||_F)``."""
    if cross.n == 0 or cross.cross is None:
        return float("nan")
    if not (mx.n == my.n == cross.n):
        raise ValueError(f"cka_from_stats: row counts differ (x {mx.n}, y {my.n}, pairs {cross.n})")
    sx, sy = mx.sum.double(), my.sum.double()
    c_xy = cross.cross.double() - torch.outer(sx, sy) / cross.n
    num = c_xy.pow(2).sum()
    den = mx.centered_gram().norm() * my.centered_gram().norm()
    return float(num / den) if den > 0 else float("nan")


def mean_shift(mx: MomentStats, my: MomentStats) -> float:
    """``||mu_y - mu_x||_2`` of two streamed matrices."""
    return float((my.mean() - mx.mean()).norm())
