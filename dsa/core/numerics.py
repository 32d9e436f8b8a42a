"""Per-block metrics of the baseline allocations, shared with the search space's reductions.

- OWL: the fraction of a block's scores above M times their mean (outlier_fraction);
- AlphaPruning: PL_Alpha_Hill of each weight matrix's eigenvalue spectrum, averaged over the
  block (block_alpha), with the ESD and Hill estimator it rests on;
- streaming float64 sums over a block's matrices (the concatenation is never built), which
  both use and the element-wise reductions of search_space/reduction.py reuse.

Nothing here raises on degenerate input: the result may be nan or +-inf; callers sanitise.
"""
import math

import torch

from .constants import OWL_M

CHUNK = 1 << 22  # elements per float64 chunk (32 MiB)
HIST_BINS = 100
PEAK_WINDOW = (0.95, 1.5)  # candidate xmin range, as multiples of xmin_peak
KS_BLOCK = 1 << 22  # candidates x eigenvalues per vectorised KS step
MIN_LOG_SPREAD = 1e-9  # a tail whose mean ln(x / xmin) is below this counts as constant

NAN = float("nan")

# ---------------------------------------------------------------- streaming sums


def chunks(mats):
    """Flattened float64 chunks of all matrices, in order."""
    for m in mats:
        flat = m.reshape(-1)
        for i in range(0, flat.numel(), CHUNK):
            # a fresh copy even for float64 input: callers update chunks in place
            yield flat[i : i + CHUNK].to(torch.float64, copy=True)


def element_count(mats):
    return sum(m.numel() for m in mats)


def element_sum(mats, f=None):
    """sum f(x) over all elements, in float64."""
    s = 0.0
    for c in chunks(mats):
        s += float((f(c) if f else c).sum())
    return s


def element_mean(mats):
    n = element_count(mats)
    return element_sum(mats) / n if n else NAN


def outlier_fraction(mats: list[torch.Tensor], m: float = OWL_M) -> float:
    """Fraction of the concatenated values strictly greater than m * their mean (OWL)."""
    mu = element_mean(mats)
    if not math.isfinite(mu):
        return NAN
    hits = sum(int((t > m * mu).sum()) for t in mats)
    return hits / element_count(mats)


# ---------------------------------------------------------------- spectra / Hill


def esd(weight: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of W^T W (squared singular values), ascending, float64.

    A non-finite matrix gives nan eigenvalues instead of an SVD error. On CPU the SVD runs on one
    thread: its last bits depend on the thread count, and a search's workers, apply.py and the
    alpha cache must agree on every alpha whatever their share of the cores.
    """
    w = weight.to(torch.float64)
    if w.ndim != 2:
        w = w.reshape(w.shape[0] if w.ndim else 1, -1)
    k = min(w.shape)
    if not bool(torch.isfinite(w).all()):
        return torch.full((k,), NAN, dtype=torch.float64, device=w.device)
    threads = torch.get_num_threads()
    if w.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return torch.linalg.svdvals(w).square().flip(0)
    except RuntimeError:  # e.g. the SVD did not converge
        return torch.full((k,), NAN, dtype=torch.float64, device=w.device)
    finally:
        torch.set_num_threads(threads)


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
    return mean_over(mats, lambda w: hill_alpha(esd(w), mode))


# ---------------------------------------------------------------- per-matrix means


def as_matrix(m):
    return m if m.ndim == 2 else m.reshape(m.shape[0] if m.ndim else 1, -1)


def mean_over(mats, f):
    """Mean of f over the matrices; a matrix whose f fails counts as nan."""
    vals = []
    for m in mats:
        try:
            vals.append(float(f(as_matrix(m))))
        except Exception:
            vals.append(NAN)
    return sum(vals) / len(vals) if vals else NAN
