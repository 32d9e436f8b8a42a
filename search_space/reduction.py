"""Reductions: a decoder block's (pre-processed) score matrices -> one python float.

Every reduction takes `mats: list[Tensor]`, the 2-D score matrices of one block's linear
layers, and returns a float. Two kinds:

- element-wise (ELEMENTWISE): act on the concatenation of all flattened matrices, as OWL
  does for its block metric: mean, var, std, l1, l2, geomean, entropy, outlier.
  They stream over the matrices in float64 chunks, so the concatenation is never built
  and memory stays bounded whatever the model size.
- matrix (MATRIX): act on each matrix and return the mean over the matrices, as
  AlphaPruning averages per-layer alphas into a block value: rank, logdet, corr,
  alpha_peak, alpha_mid.

No reduction raises on degenerate input (empty list, constant, zeros, nan, inf): the
result is then a float that may be nan or +-inf; the caller sanitises.

Sympy twins map the element expression to the block scalar, e.g. `var(Abs(log(x)))`;
undefined functions stand for the reductions sympy has no function for.
"""
import math

import sympy
import torch

from .op import Op, registry

TINY32 = torch.finfo(torch.float32).tiny  # same log floor as pre.log
CHUNK = 1 << 22  # elements per float64 chunk (32 MiB)
CORR_ROWS = 256  # rows kept by corr (evenly spaced) to stay cheap
HIST_BINS = 100
PEAK_WINDOW = (0.95, 1.5)  # candidate xmin range, as multiples of xmin_peak
KS_BLOCK = 1 << 22  # candidates x eigenvalues per vectorised KS step
MIN_LOG_SPREAD = 1e-9  # a tail whose mean ln(x / xmin) is below this counts as constant

NAN = float("nan")


# ---------------------------------------------------------------- element-wise


def _chunks(mats):
    """Flattened float64 chunks of all matrices, in order."""
    for m in mats:
        flat = m.reshape(-1)
        for i in range(0, flat.numel(), CHUNK):
            # a fresh copy even for float64 input: callers update chunks in place
            yield flat[i : i + CHUNK].to(torch.float64, copy=True)


def _count(mats):
    return sum(m.numel() for m in mats)


def _total(mats, f=None):
    """sum f(x) over all elements, in float64."""
    s = 0.0
    for c in _chunks(mats):
        s += float((f(c) if f else c).sum())
    return s


def mean(mats):
    n = _count(mats)
    return _total(mats) / n if n else NAN


def var(mats):
    """Population variance (two passes: no cancellation)."""
    n = _count(mats)
    if not n:
        return NAN
    mu = _total(mats) / n
    return _total(mats, lambda c: (c - mu).square_()) / n


def std(mats):
    v = var(mats)
    return math.sqrt(v) if v >= 0 else NAN


def l1(mats):
    n = _count(mats)
    return _total(mats, torch.abs) / n if n else NAN


def l2(mats):
    """Frobenius norm of the concatenation."""
    return math.sqrt(_total(mats, torch.square)) if mats else NAN


def geomean(mats):
    """exp(mean ln max(|x|, TINY32)): the floor matches pre.log."""
    n = _count(mats)
    if not n:
        return NAN
    mlog = _total(mats, lambda c: c.abs_().clamp_min_(TINY32).log_()) / n
    return math.exp(mlog) if mlog < 709 else math.inf


def entropy(mats):
    """Entropy of softmax(all values), divided by ln(n): in [0, 1] (1 = uniform).

    H = ln Z - sum(e * d) / Z with d = x - max(x), e = exp(d), Z = sum(e).
    """
    n = _count(mats)
    if n < 2:
        return NAN
    tops = [float(m.max()) for m in mats if m.numel()]
    if not all(math.isfinite(t) for t in tops):
        return NAN
    top = max(tops)
    z = 0.0
    ed = 0.0
    for c in _chunks(mats):
        d = c.sub_(top)
        e = d.exp()
        z += float(e.sum())
        ed += float(e.mul_(d).sum())
    if not z > 0:
        return NAN
    return (math.log(z) - ed / z) / math.log(n)


def outlier_fraction(mats: list[torch.Tensor], m: float = 5.0) -> float:
    """Fraction of the concatenated values strictly greater than m * their mean (OWL)."""
    mu = mean(mats)
    if not math.isfinite(mu):
        return NAN
    hits = sum(int((t > m * mu).sum()) for t in mats)
    return hits / _count(mats)


# ---------------------------------------------------------------- spectra / Hill


def esd(weight: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of W^T W (squared singular values), ascending, float64.

    A non-finite matrix gives nan eigenvalues instead of an SVD error.
    """
    w = weight.to(torch.float64)
    if w.ndim != 2:
        w = w.reshape(w.shape[0] if w.ndim else 1, -1)
    k = min(w.shape)
    if not bool(torch.isfinite(w).all()):
        return torch.full((k,), NAN, dtype=torch.float64, device=w.device)
    try:
        return torch.linalg.svdvals(w).square().flip(0)
    except RuntimeError:  # e.g. the SVD did not converge
        return torch.full((k,), NAN, dtype=torch.float64, device=w.device)


def _clean(eigs):
    """Sorted ascending, positive and finite only (ln needs eig > 0)."""
    e = eigs.detach().to(torch.float64).reshape(-1)
    e = e[torch.isfinite(e) & (e > 0)]
    return torch.sort(e).values


def _suffix_log_sums(loge):
    """s[i] = sum_{j >= i} ln e_j."""
    return loge.flip(0).cumsum(0).flip(0)


def hill_at(eigs: torch.Tensor, xmin: float) -> float:
    """Plain Hill estimate of the density exponent for the tail eig >= xmin:
    alpha = 1 + n / sum ln(eig / xmin). nan when undefined."""
    e = _clean(eigs)
    tail = e[e >= xmin]
    n = tail.numel()
    s = float(torch.log(tail / xmin).sum()) if n else 0.0
    return 1.0 + n / s if s > MIN_LOG_SPREAD * n and n else NAN


def _hill_ks(e, loge, suf, idx):
    """Hill alpha and KS distance for each candidate xmin = e[idx] (idx: 1-D long).

    The KS distance is the one of AlphaPruning's esd_utils: max over the tail
    x_k (k = 0..n-1) of |1 - (x_k / xmin)^(1 - alpha) - k / n|.
    """
    big_n = e.numel()
    j = torch.arange(big_n, device=e.device)
    alphas, dists = [], []
    step = max(1, KS_BLOCK // big_n)
    for lo in range(0, idx.numel(), step):
        i = idx[lo : lo + step]
        n = (big_n - i).to(torch.float64)
        s = suf[i] - n * loge[i]
        alpha = 1 + n / s
        j0 = int(i[0])  # columns below the chunk's first candidate never count
        jj, lj = j[j0:], loge[j0:]
        lr = lj[None, :] - loge[i][:, None]  # ln(x / xmin)
        fit = 1 - torch.exp((1 - alpha)[:, None] * lr)
        emp = (jj[None, :] - i[:, None]) / n[:, None]
        gap = torch.where(jj[None, :] >= i[:, None], (fit - emp).abs(), 0.0)
        d = gap.amax(1)
        # constant tail (up to the rounding of the suffix sums): alpha undefined
        bad = ~(s > MIN_LOG_SPREAD * n) | ~torch.isfinite(d)
        alphas.append(torch.where(bad, NAN, alpha))
        dists.append(torch.where(bad, math.inf, d))
    return torch.cat(alphas), torch.cat(dists)


def _xmin_peak(loge10):
    """Left edge of the fullest bin of the log10 histogram (as AlphaPruning does:
    it takes 10 ** boundaries[argmax(counts)])."""
    lo, hi = float(loge10[0]), float(loge10[-1])
    if hi <= lo:
        return 10.0**lo
    counts = torch.histc(loge10, HIST_BINS, min=lo, max=hi)
    edges = torch.linspace(lo, hi, HIST_BINS + 1, dtype=torch.float64)
    return 10.0 ** float(edges[int(torch.argmax(counts))])


def hill_alpha(eigs: torch.Tensor, mode: str = "peak") -> float:
    """PL_Alpha_Hill of an ESD (AlphaPruning).

    "peak": xmin_peak = left edge of the fullest of 100 bins of log10(eigs); every
    eigenvalue in [0.95, 1.5] * xmin_peak (except the largest) is a candidate xmin; keep
    the Hill alpha of the candidate with the smallest KS distance (first on ties).
    If the window holds no candidate (bins wider than a factor 1.5), the smallest
    eigenvalue >= 0.95 * xmin_peak is the only one.
    "mid": xmin = eigs[N // 2] (the median; the upper one for even N).
    Non-positive and non-finite eigenvalues are dropped; nan when too few remain.
    """
    if mode not in ("peak", "mid"):
        raise ValueError(f"unknown mode {mode!r}")
    try:
        e = _clean(eigs).cpu()
        big_n = e.numel()
        if big_n < 2:
            return NAN
        loge = e.log()
        suf = _suffix_log_sums(loge)
        if mode == "mid":
            i = big_n // 2
            n = big_n - i
            s = float(suf[i] - n * loge[i])
            return 1.0 + n / s if s > MIN_LOG_SPREAD * n else NAN
        xp = _xmin_peak(e.log10())
        cand = e[:-1]
        inside = (cand >= PEAK_WINDOW[0] * xp) & (cand <= PEAK_WINDOW[1] * xp)
        idx = torch.nonzero(inside).reshape(-1)
        if idx.numel() == 0:
            idx = torch.nonzero(cand >= PEAK_WINDOW[0] * xp).reshape(-1)[:1]
        if idx.numel() == 0:
            return NAN
        alphas, dists = _hill_ks(e, loge, suf, idx)
        best = int(torch.argmin(dists))
        return float(alphas[best]) if math.isfinite(float(dists[best])) else NAN
    except Exception:  # numerical trouble must not stop a search
        return NAN


def block_alpha(mats: list[torch.Tensor], mode: str = "peak") -> float:
    """Mean of hill_alpha(esd(W)) over the block's matrices."""
    if mode not in ("peak", "mid"):
        raise ValueError(f"unknown mode {mode!r}")
    return _mean_over(mats, lambda w: hill_alpha(esd(w), mode))


# ---------------------------------------------------------------- matrix


def _as2d(m):
    return m if m.ndim == 2 else m.reshape(m.shape[0] if m.ndim else 1, -1)


def _mean_over(mats, f):
    """Mean of f over the matrices; a matrix whose f fails counts as nan."""
    vals = []
    for m in mats:
        try:
            vals.append(float(f(_as2d(m))))
        except Exception:
            vals.append(NAN)
    return sum(vals) / len(vals) if vals else NAN


def _finite(m):
    return m.numel() > 0 and bool(torch.isfinite(m).all())


def _rank(m):
    """Numerical rank / min(shape), at float32 precision (the scores' precision)."""
    if not _finite(m):
        return NAN
    return int(torch.linalg.matrix_rank(m.to(torch.float32))) / min(m.shape)


def _logdet(m):
    """slogdet(G) / r with G = A A^T / c, A = m oriented r x c with r <= c:
    the mean log-eigenvalue of the small-side second-moment matrix (-inf if singular)."""
    if not _finite(m):
        return NAN
    a = m.to(torch.float64)
    if a.shape[0] > a.shape[1]:
        a = a.T
    r, c = a.shape
    sign, logabs = torch.linalg.slogdet(a @ a.T / c)
    return float(logabs) / r if float(sign) > 0 else -math.inf


def _corr(m):
    """Mean |Pearson correlation| between distinct rows (at most CORR_ROWS rows, evenly
    spaced). A constant row correlates 0 with everything."""
    if not _finite(m) or m.shape[0] < 2:
        return NAN
    rows = m.shape[0]
    if rows > CORR_ROWS:
        keep = torch.linspace(0, rows - 1, CORR_ROWS).round().long().to(m.device)
        m = m[keep]
    a = m.to(torch.float64)
    a = a - a.mean(1, keepdim=True)
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-300)
    c = (a @ a.T).abs()
    k = c.shape[0]
    return float((c.sum() - c.diagonal().sum()) / (k * (k - 1)))


def rank(mats):
    return _mean_over(mats, _rank)


def logdet(mats):
    return _mean_over(mats, _logdet)


def corr(mats):
    return _mean_over(mats, _corr)


def alpha_peak(mats):
    return block_alpha(mats, "peak")


def alpha_mid(mats):
    return block_alpha(mats, "mid")


def outlier(mats):
    return outlier_fraction(mats, 5.0)


# ---------------------------------------------------------------- registry

ELEMENTWISE = frozenset({"mean", "var", "std", "l1", "l2", "geomean", "entropy", "outlier"})
MATRIX = frozenset({"rank", "logdet", "corr", "alpha_peak", "alpha_mid"})

_F = sympy.Function

OPS = registry(
    Op("mean", mean, _F("mean")),
    Op("var", var, _F("var")),
    Op("std", std, lambda e: sympy.sqrt(_F("var")(e))),
    Op("l1", l1, lambda e: _F("mean")(sympy.Abs(e))),
    Op("l2", l2, _F("l2")),
    Op("geomean", geomean, lambda e: sympy.exp(_F("mean")(sympy.log(sympy.Abs(e))))),
    Op("entropy", entropy, _F("entropy")),
    Op("rank", rank, _F("rank")),
    Op("logdet", logdet, _F("logdet")),
    Op("corr", corr, _F("corr")),
    Op("alpha_peak", alpha_peak, _F("alpha_peak")),
    Op("alpha_mid", alpha_mid, _F("alpha_mid")),
    Op("outlier", outlier, _F("outlier")),
)
