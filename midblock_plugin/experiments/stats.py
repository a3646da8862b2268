"""Statistics of a sweep: paired comparisons that hold their level, Holm's correction, GSM8K accuracy
over seeds, and "value at a given task gain". Pure numpy + :mod:`math` (no scipy, no torch).

Map of the module:

* :func:`paired_comparison` -- a variant against a reference (uniform LoRA, or the base model) on the
  same held-out rows and the same seeds: mean difference, 95% interval, p-value (the method below).
  Passing a single variant's own values (a "difference to zero") gives that variant's interval.
* :func:`holm` -- Holm-Bonferroni adjusted p-values for the comparisons of one sweep.
* :func:`accuracy_over_seeds` / :func:`paired_accuracy_test` -- GSM8K exact match pooled over seeds
  (every seed answers the same questions) and the paired per-question test against a reference.
* :func:`value_at_gain` / :func:`at_gain_interval` -- e.g. a variant's KL interpolated (over its
  learning-rate grid) to the held-out task gain uniform LoRA reached, and its interval over seeds.
* :func:`t_two_sided_p` / :func:`t_quantile` -- Student's t, from the regularized incomplete beta
  function (Lentz continued fraction), vectorised; :func:`chi2_quantile` from the incomplete gamma.
* Superseded, kept while callers move over: :func:`point`, :func:`interval`, :func:`paired_interval`,
  :func:`mean_interval` (the two-level percentile bootstrap, :data:`METHOD`, :data:`ITERS`) and
  :func:`accuracy`.

Why the bootstrap was replaced
------------------------------
The old intervals bootstrapped the seeds (k of k) and the rows. With 3 seeds a bootstrap of seeds has
10 distinct draws and can never be wider than the spread of the 3 observed seeds, so whenever the 3
seeds agree in sign the interval excludes 0: under no true difference about a quarter of the
comparisons came out "significant" when seed-to-seed noise dominates (``benchmarks/stats_calibration.py``
measures it).

The model and the method (:func:`paired_comparison`)
----------------------------------------------------
The per-row paired difference of seed ``s`` and row ``i`` is modelled as a two-way crossed
random-effects design, ``d[s, i] = mu + a_s + b_i + e_si``: ``a_s`` the seed's effect (initialisation,
dropout, data order: a new training run), ``b_i`` the row's effect (the variant is better or worse on
*that* question in every seed: a row effect shared across seeds), ``e_si`` the seed-by-row rest. Both
seeds and rows are samples (of training runs, of questions), so the question "is the variant better on
questions of this kind, for a new training run" has the variance of the grand mean

    Var(mean) = s_seed^2 / k + s_row^2 / n + s_resid^2 / (k n).

The ANOVA mean squares are ``MS_seed`` (k-1 df, the spread of the per-seed means: ``E = s_resid^2 +
n s_seed^2``), ``MS_row`` (n-1 df, the spread of the seed-averaged row values: ``E = s_resid^2 + k s_row^2``)
and ``MS_resid`` ((k-1)(n-1) df, ``E = s_resid^2``). The test uses the unbiased

    Var = (MS_seed + max(0, MS_row - MS_resid)) / (k n),

i.e. the variance of the per-seed means over k (the t test over seeds) plus the row effect shared by all
seeds, which the spread of the per-seed means cannot see. The interval is ``mean +- t_{0.975, df} *
sqrt(Var)`` and the p-value the two-sided t test of ``mean = 0``, with Satterthwaite's degrees of freedom
``df = Var^2 / sum_j (c_j MS_j)^2 / df_j`` computed with ``MS_seed`` at its one-sided 75% upper confidence
bound ``(k-1) MS_seed / chi2_{k-1, 0.25}`` (:data:`DF_SEED_BOUND`). Two choices there were made by
simulation (``benchmarks/stats_calibration.py``, ``tests/test_stats.py``):

* ``MS_seed`` is never dropped, although ``s_resid^2 / (kn)`` could be estimated with more df from
  ``MS_resid``: setting a negative seed component to 0 (the textbook truncation) hands the seed term's
  share to the many-df terms exactly when the seed spread is small by chance, and gave 6.5-7% false
  positives with 3 seeds when seed noise is moderate. The price is power when seed-by-row noise alone
  dominates (then the test is the t test over seeds, 2 df with 3 seeds).
* Plain Satterthwaite df are liberal with 3 seeds (up to 7% when seed and row terms are comparable): the
  estimated df are largest when ``MS_seed`` is small by chance, the very case that makes a false positive.
  Taking ``MS_seed`` at its upper 75% bound for the df (only) brings every simulated case to <= 5%.

What it reduces to:

* When seed noise dominates this is the t test over the k per-seed means (df -> k-1): with 3 seeds
  ``t_{0.975,2} = 4.30`` replaces the bootstrap's implicit 1.96-with-no-uncertainty.
* When the row effect dominates it is the paired t test over rows of the seed-averaged differences
  (df -> n-1). A t test over seeds alone would be wrong here: the per-seed means share the same rows,
  so it tests "better on *these* rows" and its false-positive rate for the population of questions is
  far above 5% (the seeds agree because they saw the same rows).
* In between, Satterthwaite's df interpolate between k - 1 and n - 1.

``tests/test_stats.py`` proves by simulation (2,000 sweeps per case, through the same vectorised code
path) that the false-positive rate is at most 5% within simulation error for 3, 5 and 10 seeds when seed
noise dominates, when a shared row effect dominates, when seed-by-row noise dominates, when seed and row
terms are comparable, and with token weights; and that it has power against a true difference (with 3
seeds and seed noise dominating, only 2 df exist: a true difference of 3 standard errors is found about 40%
of the time, by any test that holds its level).
With 2 seeds or fewer the seed variance is not estimable with any reliability: no interval and no
p-value are given (``meaningful=False``); a narrow interval is never printed.

Token-weighted rows: the held-out loss of one seed is ``sum_i D[s, i] / sum_i t_i`` (``D``: summed
answer-token loss of row ``i``, ``t_i`` its answer tokens), a ratio. It is linearised (the usual ratio-
estimator treatment): the design above is applied to ``y[s, i] = (D[s, i] - R t_i) / mean(t) + R`` with
``R`` the pooled ratio, whose per-seed row means are exactly the per-seed ratios and whose row spread is
the ratio estimator's. With unit tokens ``y = D``. A variant that is better by exactly ``c`` per token on
every row gives ``y = c`` everywhere: interval ``[c, c]``.

GSM8K accuracy over seeds (:func:`accuracy_over_seeds`)
-------------------------------------------------------
``correct[s, i]`` (0/1, the same questions for every seed) follows the same crossed design, so its
standard error is ``sqrt(s_seed^2/k + s_q^2/n + s_resid^2/(kn))``. The question-sampling term ``s_q^2/n``
is never divided by k: with k identical seeds the error equals the one-seed error
``sqrt(p(1-p)/(n-1))`` (the sample-variance form lm-eval reports), whatever k. It is always at least
``sd_i(p_i)/sqrt(n)``, the standard error over questions of the seed-averaged score ``p_i``. It is below
the one-seed error only by the seed-by-question disagreement (questions a seed gets right and another
wrong), which averaging over seeds genuinely removes. The old :func:`accuracy` divided every seed's error
by k (``sqrt(sum se^2)/k``) and so shrank by sqrt(k) even for identical seeds.

Everything here is deterministic. The old bootstrap functions are deterministic for a given ``rng_seed``.

>>> import numpy as np
>>> loss = np.array([[2.0, 4.0], [3.0, 5.0]])      # 2 seeds x 2 rows (summed token loss)
>>> tokens = np.array([1, 1])
>>> round(point(loss, tokens), 3)
3.5
>>> same = paired_comparison(loss - loss, tokens)
>>> same["mean_diff"], same["ci95"], same["p_value"]
(0.0, [0.0, 0.0], 1.0)
>>> paired_comparison(loss - loss + 1.0, tokens)["meaningful"]    # 2 seeds: no interval
False
>>> holm([0.01, None, 0.04, 0.03])
[0.03, None, 0.06, 0.06]
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np


LEVEL = 0.95
#: Fewest seeds for an interval or a p-value of a comparison.
MIN_SEEDS = 3
PAIRED_METHOD = (
    "t interval of the crossed seeds x rows random-effects design: Var(mean) = (MS_seed + max(0, "
    "MS_row - MS_resid))/(kn) (the spread of the per-seed means plus the row effect all seeds share), "
    "Satterthwaite degrees of freedom with MS_seed at its upper 75% bound; two-sided t test of a zero "
    "difference; needs at least 3 seeds"
)

#: Bootstrap draws of the superseded bootstrap intervals (deterministic for a given ``rng_seed``).
ITERS = 2000
#: Method of the superseded bootstrap intervals.
METHOD = (
    "two-level percentile bootstrap: each draw resamples the seeds (k of k) and the held-out rows "
    "(n of n, the same rows for every seed and variant), 95% = 2.5th-97.5th percentile of the draws"
)


# ---------------------------------------------------------------- Student's t


_TINY = 1e-300
_EPS = 1e-15
#: Beyond this many degrees of freedom t is computed from the normal distribution with a 1/df correction
#: (relative error below 1e-8 there; the continued fraction needs ~sqrt(df) steps).
_NORMAL_DF = 1e4


def _lgamma(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.lgamma, otypes=[np.float64])(x)


def _betacf(a: np.ndarray, b: np.ndarray, x: np.ndarray, max_iter: int = 5000) -> np.ndarray:
    """Continued fraction of the incomplete beta function (modified Lentz), elementwise."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
    h = d.copy()
    for m in range(1, max_iter + 1):
        m2 = 2.0 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < _TINY, _TINY, c)
        h = h * d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < _TINY, _TINY, c)
        step = d * c
        h = h * step
        if np.all(np.abs(step - 1.0) < _EPS):
            break
    return h


def betainc(a: Any, b: Any, x: Any) -> np.ndarray:
    """Regularized incomplete beta function ``I_x(a, b)`` (elementwise; ``a, b > 0``, ``0 <= x <= 1``)."""
    a, b, x = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, b, x)))
    out = np.empty(x.shape)
    lo, hi = x <= 0.0, x >= 1.0
    out[lo], out[hi] = 0.0, 1.0
    mid = ~(lo | hi)
    if mid.any():
        am, bm, xm = a[mid], b[mid], x[mid]
        log_front = _lgamma(am + bm) - _lgamma(am) - _lgamma(bm) + am * np.log(xm) + bm * np.log1p(-xm)
        front = np.exp(log_front)
        direct = xm < (am + 1.0) / (am + bm + 2.0)
        # I_x(a, b) by its continued fraction where that converges fast, else 1 - I_{1-x}(b, a)
        aa, bb, xx = np.where(direct, am, bm), np.where(direct, bm, am), np.where(direct, xm, 1.0 - xm)
        cf = front * _betacf(aa, bb, xx) / aa
        out[mid] = np.where(direct, cf, 1.0 - cf)
    return np.clip(out, 0.0, 1.0)


def t_two_sided_p(t: Any, df: Any) -> np.ndarray:
    """``P(|T| >= |t|)`` for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    t, df = np.broadcast_arrays(np.abs(np.asarray(t, dtype=np.float64)), np.asarray(df, dtype=np.float64))
    out = np.full(t.shape, np.nan)
    ok = np.isfinite(df) & (df > 0) & ~np.isnan(t)
    normal = ok & (df > _NORMAL_DF)
    beta = ok & ~normal
    if normal.any():  # z = t (1 - 1/(4 df)) / sqrt(1 + t^2 / (2 df)) is normal to O(1/df^2)
        tn, dfn = t[normal], df[normal]
        with np.errstate(over="ignore", invalid="ignore"):
            z = np.where(np.isinf(tn), np.inf, tn * (1 - 1 / (4 * dfn)) / np.sqrt(1 + tn * tn / (2 * dfn)))
        out[normal] = np.vectorize(math.erfc, otypes=[np.float64])(z / math.sqrt(2.0))
    if beta.any():
        tb, dfb = t[beta], df[beta]
        with np.errstate(over="ignore", invalid="ignore"):
            x = np.where(np.isinf(tb), 0.0, dfb / (dfb + tb * tb))
        out[beta] = betainc(dfb / 2.0, 0.5, x)
    return out


def t_quantile(q: Any, df: Any) -> np.ndarray:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (e.g. ``t_quantile(0.975, 2) = 4.303``)."""
    q, df = np.broadcast_arrays(np.asarray(q, dtype=np.float64), np.asarray(df, dtype=np.float64))
    if np.any((q <= 0) | (q >= 1)):
        raise ValueError(f"a t quantile needs 0 < q < 1; got q={q}.")
    alpha = 2.0 * np.minimum(q, 1.0 - q)  # two-sided tail of |t|
    normal = df > _NORMAL_DF
    dfc = np.where(normal, 1.0, df)
    # P(|T| >= t) = 1 - I_y(1/2, df/2) with y = t^2/(df + t^2), increasing in y: bisect y on [0, 1]
    lo, hi = np.zeros(q.shape), np.ones(q.shape)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        below = betainc(0.5, dfc / 2.0, mid) < 1.0 - alpha
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        if np.all(hi - lo <= 1e-15 * hi):
            break
    y = 0.5 * (lo + hi)
    with np.errstate(divide="ignore"):
        t = np.atleast_1d(np.sqrt(dfc * y / (1.0 - y))).reshape(q.shape).copy()
    if normal.any():  # the normal quantile z (bisect erfc(z / sqrt 2) = alpha), then Cornish-Fisher to O(1/df^3)
        erfc = np.vectorize(math.erfc, otypes=[np.float64])
        lo, hi = np.zeros(int(normal.sum())), np.full(int(normal.sum()), 40.0)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            above = erfc(mid / math.sqrt(2.0)) > alpha[normal]
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
            if np.all(hi - lo <= 1e-15 * hi):
                break
        z, dfn = 0.5 * (lo + hi), df[normal]
        t[normal] = z + (z**3 + z) / (4 * dfn) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dfn**2)
    return np.where(q < 0.5, -t, t)


# ---------------------------------------------------------------- the crossed design


def _gammainc_lower(a: float, x: float) -> float:
    """Regularized lower incomplete gamma ``P(a, x)`` (series below ``a + 1``, continued fraction above)."""
    if x <= 0:
        return 0.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                break
        return min(1.0, total * math.exp(log_front))
    b = x + 1.0 - a
    c, d = 1.0 / _TINY, 1.0 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        h *= d * c
        if abs(d * c - 1.0) < _EPS:
            break
    return max(0.0, 1.0 - math.exp(log_front) * h)


def chi2_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of the chi-square distribution with ``df`` degrees of freedom."""
    if not 0 < q < 1 or not df > 0:
        raise ValueError(f"a chi-square quantile needs 0 < q < 1 and df > 0; got q={q}, df={df}.")
    lo, hi = 0.0, max(1.0, 2.0 * df)
    while _gammainc_lower(df / 2.0, hi / 2.0) < q:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _gammainc_lower(df / 2.0, mid / 2.0) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return 0.5 * (lo + hi)


#: The seed mean square enters Satterthwaite's degrees of freedom at its one-sided upper confidence bound of
#: this level (the variance itself uses the mean square as measured): see the module docstring.
DF_SEED_BOUND = 0.75


def _crossed(y: np.ndarray, seed_component: bool = True) -> dict[str, np.ndarray]:
    """Mean, variance of the mean and degrees of freedom of ``y`` (..., k, n) under the crossed seeds x rows
    random-effects design (module docstring), for every leading index at once.

    ``var``/``df``: the variance of the test, ``(MS_seed + max(0, MS_row - MS_resid)) / (kn)``, with
    Satterthwaite's df computed from the seed mean square at its upper confidence bound (:data:`DF_SEED_BOUND`).
    ``var_components``: the variance from the three components each truncated at 0 (a standard error).
    ``seed_component`` False (or k = 1) takes the seeds as fixed: the variance over rows of the seed-averaged
    values, n - 1 df."""
    k, n = y.shape[-2:]
    grand = y.mean(axis=(-2, -1))
    seed_mean = y.mean(axis=-1)
    row_mean = y.mean(axis=-2)
    nan = np.full(grand.shape, np.nan)
    out = {
        "mean": grand,
        "seed_mean": seed_mean,
        "var": nan,
        "var_components": nan,
        "df": nan,
        "sd_seed": nan,
        "sd_row": nan,
        "sd_resid": nan,
    }
    if n < 2:
        return out
    kn = k * n
    ms_row = k * ((row_mean - grand[..., None]) ** 2).sum(axis=-1) / (n - 1)
    if k == 1 or not seed_component:
        out.update(
            var=ms_row / kn,
            var_components=ms_row / kn,
            df=np.full(grand.shape, float(n - 1)),
            sd_row=np.sqrt(ms_row / k),
        )
        return out
    ms_seed = n * ((seed_mean - grand[..., None]) ** 2).sum(axis=-1) / (k - 1)
    resid = y - seed_mean[..., None] - row_mean[..., None, :] + grand[..., None, None]
    ms_resid = (resid**2).sum(axis=(-2, -1)) / ((k - 1) * (n - 1))
    # the test: the seed mean square always (it carries the seed variance and its uncertainty, k - 1 df), plus
    # the row effect shared by all seeds, which the spread of the per-seed means cannot see
    row = (ms_row > ms_resid).astype(np.float64)
    var = (ms_seed + row * (ms_row - ms_resid)) / kn
    seed_df = ms_seed * (k - 1) / chi2_quantile(1.0 - DF_SEED_BOUND, k - 1)
    var_df = (seed_df + row * (ms_row - ms_resid)) / kn
    denom = (
        (seed_df / kn) ** 2 / (k - 1)
        + (row * ms_row / kn) ** 2 / (n - 1)
        + (row * ms_resid / kn) ** 2 / ((k - 1) * (n - 1))
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(denom > 0, var_df**2 / np.where(denom > 0, denom, 1.0), np.nan)
    # the components, each truncated at 0 (a standard error: never below the error over rows of the seed means)
    s_seed = np.maximum(ms_seed - ms_resid, 0.0) / n
    s_row = np.maximum(ms_row - ms_resid, 0.0) / k
    out.update(
        var=np.maximum(var, 0.0),
        var_components=s_seed / k + s_row / n + ms_resid / kn,
        df=df,
        sd_seed=np.sqrt(s_seed),
        sd_row=np.sqrt(s_row),
        sd_resid=np.sqrt(ms_resid),
    )
    return out


def _test(mean: np.ndarray, var: np.ndarray, df: np.ndarray, interval: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided p-value and 95% half-width (NaN when ``interval`` is False), elementwise; a zero variance gives
    p 1 (mean 0) or 0 and half-width 0. The interval excludes 0 exactly when p < 0.05."""
    se = np.sqrt(var)
    zero = ~(se > 0)
    safe_df = np.where(zero | ~np.isfinite(df), 1.0, df)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(zero, np.where(mean == 0, 1.0, 0.0), t_two_sided_p(mean / np.where(zero, 1.0, se), safe_df))
    if not interval:
        return p, np.full(np.shape(mean), np.nan)
    half = np.where(zero, 0.0, t_quantile(np.full(np.shape(mean), (1 + LEVEL) / 2), safe_df) * se)
    return p, half


def _ratio_rows(diffs: np.ndarray, tokens: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(y, pooled ratio): the linearised per-row values of a token-weighted mean, for (..., k, n) diffs."""
    if tokens is None:
        return diffs, diffs.mean(axis=(-2, -1))
    k = diffs.shape[-2]
    ratio = diffs.sum(axis=(-2, -1)) / (k * tokens.sum())
    y = (diffs - ratio[..., None, None] * tokens) / tokens.mean() + ratio[..., None, None]
    return y, ratio


def _paired_arrays(
    diffs: np.ndarray, tokens: Optional[np.ndarray] = None, interval: bool = True
) -> dict[str, np.ndarray]:
    """The vectorised core of :func:`paired_comparison`: ``diffs`` (..., k, n); returns arrays over the
    leading axes (``mean``, ``var``, ``df``, ``p_value``, ``half_width``, ``seed_mean``, components).
    ``interval`` False skips the half-widths (the p-values alone decide significance)."""
    y, ratio = _ratio_rows(diffs, tokens)
    out = _crossed(y)
    out["mean"] = ratio
    out["p_value"], out["half_width"] = _test(ratio, out["var"], out["df"], interval)
    return out


def _as_rows(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(
            f"{name} must be a (seeds, rows) array with at least one of each; got shape {arr.shape}. "
            "Pass one row of per-row values per seed, the same rows in the same order for every seed."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite values (NaN or inf); drop or fix those rows before comparing.")
    return arr


def paired_comparison(diffs: Any, tokens: Any = None) -> dict[str, Any]:
    """A variant against a reference from per-row paired differences ``diffs`` (seeds, rows): variant minus
    reference, the same rows (and seeds) for both. ``tokens`` (rows,): answer tokens per row when the
    statistic is a token-weighted mean (``diffs`` are then summed token losses and one seed's value is
    ``sum_i diffs[s, i] / sum_i tokens[i]``); rows with no token are dropped. Without ``tokens`` every row
    weighs 1.

    Returns ``mean_diff``, ``ci95`` ([lo, hi]), ``p_value`` (two-sided, unadjusted: see :func:`holm`),
    ``significant`` (p < 0.05, unadjusted), ``meaningful``, ``method``, ``seeds``, ``rows``, ``per_seed``
    (the per-seed mean differences), ``se``, ``df`` and the variance components ``sd_seed``, ``sd_row``,
    ``sd_resid``. With fewer than 3 seeds (or fewer than 2 rows) ``ci95``, ``p_value``, ``se`` and ``df``
    are None and ``meaningful`` is False. Differences that are all exactly 0 give 0, [0, 0] and p 1."""
    d = _as_rows("diffs", diffs)
    tok = None
    if tokens is not None:
        tok = np.asarray(tokens, dtype=np.float64)
        if tok.ndim != 1 or tok.shape[0] != d.shape[1]:
            raise ValueError(f"tokens must be (rows,) = ({d.shape[1]},) to match diffs {d.shape}; got {tok.shape}.")
        if np.any(tok < 0) or not np.any(tok > 0):
            raise ValueError("tokens must be non-negative with at least one row holding an answer token.")
        keep = tok > 0  # a row with no scored token carries no information (its answer was cut off)
        d, tok = d[:, keep], tok[keep]
    k, n = d.shape
    r = _paired_arrays(d, tok)
    per_seed = [float(v) for v in ((d.sum(axis=1) / tok.sum()) if tok is not None else d.mean(axis=1))]
    out: dict[str, Any] = {
        "mean_diff": float(r["mean"]),
        "ci95": None,
        "p_value": None,
        "significant": False,
        "meaningful": False,
        "seeds": k,
        "rows": n,
        "per_seed": per_seed,
        "se": None,
        "df": None,
        "sd_seed": None,
        "sd_row": None,
        "sd_resid": None,
    }
    if not d.any():
        out.update(
            mean_diff=0.0,
            ci95=[0.0, 0.0],
            p_value=1.0,
            meaningful=True,
            se=0.0,
            method="the differences are all exactly 0 (the variant and the reference are identical)",
        )
        return out
    if k < MIN_SEEDS or n < 2:
        out["method"] = (
            f"no interval: an interval needs at least {MIN_SEEDS} seeds and 2 rows (got {k} seeds, "
            f"{n} rows); with fewer seeds the seed-to-seed variance cannot be estimated"
        )
        return out
    se, df = math.sqrt(float(r["var"])), float(r["df"])
    half = float(r["half_width"])
    out.update(
        ci95=[out["mean_diff"] - half, out["mean_diff"] + half],
        p_value=float(r["p_value"]),
        meaningful=True,
        se=se,
        df=None if not math.isfinite(df) else df,
        sd_seed=float(r["sd_seed"]),
        sd_row=float(r["sd_row"]),
        sd_resid=float(r["sd_resid"]),
        method=f"{PAIRED_METHOD}; {k} seeds x {n} rows" + (f", df = {df:.1f}" if math.isfinite(df) else ""),
    )
    out["significant"] = out["p_value"] < 1 - LEVEL
    return out


def holm(p_values: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm-Bonferroni adjusted p-values, in the input order; ``None`` entries stay ``None`` and do not count
    in the number of tests. Adjusted values are monotone in the raw ones and capped at 1."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    for i in idx:
        p = float(p_values[i])
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p_values[{i}] = {p_values[i]!r} is not a probability; pass values in [0, 1] or None.")
    m = len(idx)
    out: list[Optional[float]] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: float(p_values[j]))):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out


# ---------------------------------------------------------------- GSM8K accuracy


def _as_correct(name: str, values: Any) -> np.ndarray:
    arr = _as_rows(name, values)
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must hold 0/1 per question (1 = answered correctly); got other values.")
    return arr


def accuracy_over_seeds(correct: Any) -> dict[str, Any]:
    """GSM8K exact match pooled over seeds from ``correct`` (seeds, questions) 0/1, the same questions for
    every seed: ``{"exact_match", "stderr", "n", "seeds", "per_seed", "method"}``. ``stderr`` is the crossed
    design's (module docstring): it equals the one-seed error ``sqrt(p(1-p)/(n-1))`` for identical seeds
    and is never below the error over questions of the seed-averaged scores, nor below the smallest one-seed
    error on the same questions (the question sample does not grow with seeds); None with one question."""
    c = _as_correct("correct", correct)
    k, n = c.shape
    r = _crossed(c)
    var = float(r["var_components"])
    crossed = math.sqrt(var) if math.isfinite(var) else None
    # Floor: never below the smallest one-seed binomial error on the same questions. Averaging seeds removes
    # only the seeds' disagreement, not the sampling of the questions; the floor keeps the error honest
    # about that (conservative when seeds disagree a lot on single questions).
    one_seed = [math.sqrt(p * (1 - p) / (n - 1)) for p in c.mean(axis=1)] if n > 1 else []
    stderr = crossed
    if crossed is not None and one_seed:
        stderr = max(crossed, min(one_seed))
    return {
        "exact_match": float(c.mean()),
        "stderr": stderr,
        "n": n,
        "seeds": k,
        "per_seed": [float(v) for v in c.mean(axis=1)],
        "method": "standard error of the crossed seeds x questions design: s_seed^2/k + s_question^2/n + "
        "s_resid^2/(kn), the question-sampling term not divided by the seed count, and never below "
        "the smallest one-seed error sqrt(p(1-p)/(n-1)) on the same questions",
    }


def _paired_accuracy_arrays(
    correct: np.ndarray, reference: np.ndarray, interval: bool = True
) -> dict[str, np.ndarray]:
    """Vectorised core of :func:`paired_accuracy_test` over leading axes of (..., k, n) arrays."""
    d = correct - reference
    k = d.shape[-2]
    r = _crossed(d, seed_component=k >= MIN_SEEDS)
    r["p_value"], r["half_width"] = _test(r["mean"], r["var"], r["df"], interval)
    return r


def paired_accuracy_test(correct: Any, reference: Any) -> dict[str, Any]:
    """Paired per-question test of a variant's exact match against a reference's, both (seeds, questions)
    0/1 on the same questions (and seeds in the same order): ``{"mean_diff", "ci95", "p_value", "method",
    "n", "seeds", "includes_seed_variation"}``. With 3 or more seeds it is the crossed seeds x questions t
    test of :func:`paired_comparison` on the per-question differences; with 1 or 2 seeds the seeds are taken
    as fixed (the trained models as they are): the paired t test over questions of the seed-averaged
    differences (with one seed, the large-sample McNemar test). Identical inputs give 0, [0, 0] and p 1."""
    c, ref = _as_correct("correct", correct), _as_correct("reference", reference)
    if c.shape != ref.shape:
        raise ValueError(f"a paired test needs the same seeds and questions; got {c.shape} and {ref.shape}.")
    k, n = c.shape
    out: dict[str, Any] = {
        "mean_diff": float((c - ref).mean()),
        "ci95": None,
        "p_value": None,
        "n": n,
        "seeds": k,
        "includes_seed_variation": k >= MIN_SEEDS,
    }
    if np.array_equal(c, ref):
        out.update(
            mean_diff=0.0, ci95=[0.0, 0.0], p_value=1.0, method="identical answers on every question: no difference"
        )
        return out
    if n < 2:
        out["method"] = "no test: a paired test over questions needs at least 2 questions"
        return out
    r = _paired_accuracy_arrays(c, ref)
    half = float(r["half_width"])
    out.update(ci95=[out["mean_diff"] - half, out["mean_diff"] + half], p_value=float(r["p_value"]))
    out["method"] = (
        f"{PAIRED_METHOD.split('; needs')[0]}; {k} seeds x {n} questions"
        if k >= MIN_SEEDS
        else f"paired t test over {n} questions of the seed-averaged differences; with {k} seed(s) the "
        "seeds are taken as fixed (seed-to-seed variation is not in the interval: it needs 3 seeds)"
    )
    return out


# ---------------------------------------------------------------- value at a task gain


def value_at_gain(gains: Sequence[float], values: Sequence[float], target: float) -> Optional[float]:
    """``values`` (e.g. KL to the base model) linearly interpolated at the task gain ``target``, from points
    ``(gains[j], values[j])`` of one variant and one seed (over a learning-rate grid or saved steps).

    The points are sorted by gain (points with the same gain are averaged; non-finite points dropped) and
    read as a curve ``value(gain)``. A ``target`` outside ``[min gain, max gain]`` gives None, never an
    extrapolation: the variant did not reach (or did not stay below) that gain on the grid, which a report
    should say as such. A single point answers only its own gain."""
    g = np.asarray(gains, dtype=np.float64).ravel()
    v = np.asarray(values, dtype=np.float64).ravel()
    if g.shape != v.shape:
        raise ValueError(f"gains and values must pair up one to one; got {g.size} gains and {v.size} values.")
    if target is None or not math.isfinite(float(target)):
        return None
    keep = np.isfinite(g) & np.isfinite(v)
    g, v = g[keep], v[keep]
    if g.size == 0:
        return None
    uniq, inverse = np.unique(g, return_inverse=True)
    mean_v = np.bincount(inverse, weights=v) / np.bincount(inverse)
    target = float(target)
    if target < uniq[0] or target > uniq[-1]:
        return None
    return float(np.interp(target, uniq, mean_v))


def at_gain_interval(per_seed_values: Sequence[Optional[float]]) -> dict[str, Any]:
    """Mean over seeds of a per-seed value (e.g. :func:`value_at_gain` for each seed) with a t interval over
    the seeds (df = k - 1; None with fewer than 3 seeds with a value): ``{"mean", "ci95", "per_seed",
    "seeds", "missing", "method"}``. ``None`` per-seed values (the gain was not reached) are kept in
    ``per_seed``, counted in ``missing`` and left out of the mean."""
    per_seed = [None if v is None or not math.isfinite(float(v)) else float(v) for v in per_seed_values]
    vals = np.array([v for v in per_seed if v is not None], dtype=np.float64)
    k = int(vals.size)
    out: dict[str, Any] = {
        "mean": float(vals.mean()) if k else None,
        "ci95": None,
        "per_seed": per_seed,
        "seeds": k,
        "missing": len(per_seed) - k,
    }
    if k < MIN_SEEDS:
        out["method"] = f"no interval: it needs at least {MIN_SEEDS} seeds with a value (got {k})"
        return out
    se = float(vals.std(ddof=1)) / math.sqrt(k)
    half = 0.0 if se == 0 else float(t_quantile((1 + LEVEL) / 2, k - 1)) * se
    out.update(
        ci95=[out["mean"] - half, out["mean"] + half], se=se, method=f"t interval over {k} seeds (df = {k - 1})"
    )
    return out


# ---------------------------------------------------------------- superseded: the two-level bootstrap


def _check(loss: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    loss = np.asarray(loss, dtype=np.float64)
    tokens = np.asarray(tokens, dtype=np.float64)
    if loss.ndim != 2 or tokens.ndim != 1 or loss.shape[1] != tokens.shape[0]:
        raise ValueError(
            f"per-row losses must be (seeds, rows) and tokens (rows,); got {loss.shape} and {tokens.shape}."
        )
    if loss.shape[0] < 1 or loss.shape[1] < 1 or tokens.sum() <= 0:
        raise ValueError("an interval needs at least one seed, one held-out row and one answer token.")
    keep = tokens > 0  # a row with no scored token carries no information (its answer was cut off)
    return loss[:, keep], tokens[keep]


def point(loss: np.ndarray, tokens: np.ndarray) -> float:
    """Mean over seeds of the token-weighted mean loss over rows.

    ``loss[s, i]``: summed answer-token loss of row ``i`` under seed ``s``; ``tokens[i]``: its answer tokens."""
    loss, tokens = _check(loss, tokens)
    return float((loss.sum(axis=1) / tokens.sum()).mean())


def _draws(shape: tuple[int, int], iters: int, rng_seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(rng_seed)
    k, n = shape
    return rng.integers(0, k, size=(iters, k)), rng.integers(0, n, size=(iters, n))


def _boot(loss: np.ndarray, tokens: np.ndarray, seeds: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The statistic under every draw: (iters,)."""
    tok = tokens[rows].sum(axis=1)  # (iters,)
    per_seed = loss[:, rows].sum(axis=2)  # (k, iters)
    per_seed = per_seed / np.where(tok > 0, tok, np.nan)[None, :]
    picked = np.take_along_axis(per_seed.T, seeds, axis=1)  # (iters, k)
    return np.nanmean(picked, axis=1)


def _ci(draws: np.ndarray) -> list[float]:
    lo, hi = np.nanpercentile(draws, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return [float(lo), float(hi)]


def interval(loss: np.ndarray, tokens: np.ndarray, iters: int = ITERS, rng_seed: int = 0) -> dict[str, Any]:
    """Superseded by :func:`paired_comparison` (pass the variant's own losses). ``{"mean", "ci95": [lo, hi],
    "per_seed"}`` of one variant's held-out loss by the two-level bootstrap (:data:`METHOD`)."""
    loss, tokens = _check(loss, tokens)
    seeds, rows = _draws(loss.shape, iters, rng_seed)
    per_seed = (loss.sum(axis=1) / tokens.sum()).tolist()
    return {"mean": point(loss, tokens), "ci95": _ci(_boot(loss, tokens, seeds, rows)), "per_seed": per_seed}


def paired_interval(
    loss: np.ndarray, reference: np.ndarray, tokens: np.ndarray, iters: int = ITERS, rng_seed: int = 0
) -> dict[str, Any]:
    """Superseded by :func:`paired_comparison`, which holds its level: with 3 seeds this bootstrap calls a
    difference significant whenever the seeds agree in sign (``benchmarks/stats_calibration.py``).

    ``{"mean_diff", "ci95", "significant"}`` of ``loss - reference``, both (seeds, rows) on the same rows and
    seeds (row ``i`` and seed ``s`` mean the same in both); ``significant``: the interval excludes 0."""
    if np.shape(loss) != np.shape(reference):
        raise ValueError(
            f"a paired difference needs the same seeds and rows; got {np.shape(loss)} and {np.shape(reference)}."
        )
    loss, _ = _check(loss, tokens)
    reference, tokens = _check(reference, tokens)
    seeds, rows = _draws(loss.shape, iters, rng_seed)
    diff = loss - reference
    if not diff.any():
        return {"mean_diff": 0.0, "ci95": [0.0, 0.0], "significant": False}
    ci = _ci(_boot(diff, tokens, seeds, rows))
    return {"mean_diff": point(diff, tokens), "ci95": ci, "significant": bool(ci[0] > 0 or ci[1] < 0)}


def mean_interval(values: np.ndarray, iters: int = ITERS, rng_seed: int = 0) -> dict[str, Any]:
    """Superseded by :func:`paired_comparison` (pass the values without tokens). ``{"mean", "ci95"}`` of a
    (seeds, items) array of per-item values (e.g. per-block forgetting) by the two-level bootstrap with every
    item weighted equally."""
    values = np.asarray(values, dtype=np.float64)
    return interval(values, np.ones(values.shape[1]), iters=iters, rng_seed=rng_seed)


def accuracy(per_seed: list[dict]) -> dict[str, Any]:
    """Superseded by :func:`accuracy_over_seeds`, whose error does not shrink with the seed count: this one
    divides by k although every seed answers the same questions.

    GSM8K exact match pooled over seeds: the mean of the per-seed accuracies, its standard error
    ``sqrt(sum se_s^2) / k`` (independent seeds), ``n`` per seed and the seed count; ``per_seed`` holds
    ``{"exact_match", "stderr", "n"}`` dicts (a filter of :func:`~.train.gsm8k_summary`)."""
    vals = [p for p in per_seed if p and p.get("exact_match") is not None]
    if not vals:
        return {"exact_match": None, "stderr": None, "n": None, "seeds": 0}
    k = len(vals)
    acc = sum(float(p["exact_match"]) for p in vals) / k
    ses = [p.get("stderr") for p in vals]
    se = (
        None
        if any(s is None or not np.isfinite(s) for s in ses)
        else float(np.sqrt(sum(float(s) ** 2 for s in ses)) / k)
    )
    return {"exact_match": acc, "stderr": se, "n": vals[0].get("n"), "seeds": k}
