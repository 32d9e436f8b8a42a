"""Per-block values -> per-block sparsity ratios that meet the global budget exactly.

Every function works on 1-D float64 tensors with one entry per decoder block. ``sizes``
holds the prunable weight count of each block and the budget is parameter-weighted:

    sum(sizes * ratios) == sparsity * sum(sizes),   0 <= ratios <= max_ratio < 1.

With equal-sized blocks this is the unweighted mean used by OWL's and DSA's own code.
"""

import torch
from torch import Tensor

from dsa.core.guards import DEFAULT_GUARDS, Guards

DEFAULT_MAX_RATIO = 0.99
# Tolerance on the weighted mean ratio (a relative budget error, independent of model size).
BUDGET_TOL = 1e-9
_BISECTION_STEPS = 200


def _as_float64(values) -> Tensor:
    return torch.as_tensor(values, dtype=torch.float64).reshape(-1)


def _weights(sizes) -> Tensor:
    """Block sizes as fractions of the total, so the budget reads mean(ratios) == sparsity."""
    sizes = _as_float64(sizes)
    if sizes.numel() == 0 or bool((sizes < 0).any()) or not bool(torch.isfinite(sizes).all()):
        raise ValueError("sizes must be a non-empty vector of finite non-negative counts")
    total = sizes.sum()
    if total <= 0:
        raise ValueError("sizes must not all be zero")
    return sizes / total


def _check_lengths(values: Tensor, sizes) -> None:
    if values.numel() != _as_float64(sizes).numel():
        raise ValueError(f"got {values.numel()} values for {_as_float64(sizes).numel()} blocks")


def weighted_mean(values, sizes) -> float:
    """Parameter-weighted mean of a per-block vector (the global sparsity of a ratio vector)."""
    return float((_weights(sizes) * _as_float64(values)).sum())


def sanitize(values, guards: Guards = DEFAULT_GUARDS) -> Tensor:
    """NaN -> 0, +inf -> +1e6, -inf -> -1e6 (DSA's convention: a large finite value, so a candidate
    function never crashes the map), as float64. The fills are `guards`' nan_fill and inf_sentinel."""
    return torch.nan_to_num(_as_float64(values), nan=guards.nan_fill, posinf=guards.inf_sentinel,
                            neginf=-guards.inf_sentinel)


def uniform(sizes, sparsity: float) -> Tensor:
    """Every block gets the global sparsity."""
    return torch.full((_as_float64(sizes).numel(),), float(sparsity), dtype=torch.float64)


def _meets_budget(ratios: Tensor, weights: Tensor, sparsity: float, max_ratio: float) -> bool:
    in_range = bool((ratios >= 0).all()) and bool((ratios <= max_ratio).all())
    return in_range and abs(float((weights * ratios).sum()) - sparsity) <= BUDGET_TOL


def _solve_shift(ratios: Tensor, weights: Tensor, sparsity: float, max_ratio: float) -> float:
    """Bisection for t with sum(w * clip(r + t, 0, max_ratio)) == sparsity.

    The left side is non-decreasing in t; at t_low every block sits at 0, at t_high at
    max_ratio, so the root is bracketed whenever 0 <= sparsity <= max_ratio.
    """
    low = -float(ratios.max())
    high = max_ratio - float(ratios.min())
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (low + high)
        if float((weights * (ratios + mid).clamp(0.0, max_ratio)).sum()) < sparsity:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12:
            break
    return 0.5 * (low + high)


def _correct_residual(ratios: Tensor, weights: Tensor, sparsity: float, max_ratio: float) -> Tensor:
    """Spread the tiny budget error left by bisection over blocks that can still move.

    Prefers blocks strictly inside (0, max_ratio) (they carry the shift); falls back to any
    block with room in the needed direction when all blocks sit on a bound.
    """
    residual = sparsity - float((weights * ratios).sum())
    if residual == 0.0:
        return ratios
    movable = (ratios > 0) & (ratios < max_ratio)
    if not bool((weights * movable).sum() > 0):
        movable = ratios < max_ratio if residual > 0 else ratios > 0
    movable_weight = float((weights * movable).sum())
    if movable_weight <= 0:
        return ratios
    corrected = ratios + movable.to(torch.float64) * (residual / movable_weight)
    return corrected.clamp(0.0, max_ratio)


def rebalance(ratios, sizes, sparsity: float, max_ratio: float = DEFAULT_MAX_RATIO) -> Tensor:
    """Clip ratios into [0, max_ratio] and restore the budget with one additive shift.

    A single shift t (clip(r + t) per block) keeps the ordering and the gaps between the
    unclipped blocks, which is what the maps encode. A vector already in range and on
    budget (to BUDGET_TOL on the weighted mean) comes back bit-exact.
    Raises ValueError when no vector in [0, max_ratio] can meet the budget.
    """
    ratios = _as_float64(ratios)
    weights = _weights(sizes)
    _check_lengths(ratios, sizes)
    sparsity = float(sparsity)
    if not 0.0 < max_ratio < 1.0:
        raise ValueError(f"max_ratio must lie in (0, 1), got {max_ratio}")
    if not 0.0 <= sparsity <= max_ratio:
        raise ValueError(f"sparsity {sparsity} cannot be met with ratios in [0, {max_ratio}]")
    if not bool(torch.isfinite(ratios).all()):
        raise ValueError("ratios must be finite (sanitize the values before mapping)")
    if _meets_budget(ratios, weights, sparsity, max_ratio):
        return ratios.clone()
    shift = _solve_shift(ratios, weights, sparsity, max_ratio)
    shifted = (ratios + shift).clamp(0.0, max_ratio)
    return _correct_residual(shifted, weights, sparsity, max_ratio)


def _minmax(values: Tensor) -> Tensor | None:
    """Values scaled to [0, 1], or None when they carry no ranking (all equal / non-finite)."""
    values = sanitize(values)
    low, high = values.min(), values.max()
    span = high - low
    if not bool(torch.isfinite(span)) or span <= 0:
        return None
    scaled = (values - low) / span
    return scaled if bool(torch.isfinite(scaled).all()) else None


def owl_map(values, sizes, sparsity: float, lam: float, max_ratio: float = DEFAULT_MAX_RATIO) -> Tensor:
    """OWL's map: larger value (more important, e.g. more outliers) -> LESS pruning.

    d = minmax(values) * 2 * lam; density = d - mean_w(d) + (1 - sparsity);
    ratio = 1 - density, so ratios span sparsity +- lam. mean_w is the parameter-weighted
    mean (OWL's plain mean when blocks are equal-sized), keeping the weighted budget.
    All-equal or non-finite values give the uniform allocation.
    """
    return _lambda_map(values, sizes, sparsity, lam, max_ratio, lambda scaled: scaled)


def _lambda_map(values, sizes, sparsity: float, lam: float, max_ratio: float, orient) -> Tensor:
    """OWL's scaling of `orient(minmax(values))` (OWL: as is; DSA: 1 - x): d = x * 2 * lam,
    density = d - mean_w(d) + (1 - sparsity), ratio = 1 - density; uniform when values are flat."""
    values = _as_float64(values)
    _check_lengths(values, sizes)
    if lam < 0:
        raise ValueError(f"lam must be non-negative, got {lam}")
    scaled = _minmax(values)
    if scaled is None:
        return rebalance(uniform(sizes, sparsity), sizes, sparsity, max_ratio)
    spread = orient(scaled) * (2.0 * lam)
    density = spread - weighted_mean(spread, sizes) + (1.0 - sparsity)
    return rebalance(1.0 - density, sizes, sparsity, max_ratio)


def alpha_map(values, sizes, sparsity: float, eps: float, max_ratio: float = DEFAULT_MAX_RATIO) -> Tensor:
    """AlphaPruning's map: larger value (larger alpha, less trained) -> MORE pruning.

    r = (1 - eps) + 2 * eps * minmax(values); ratio = c * r with
    c = sparsity * sum(sizes) / sum(sizes * r). The product can exceed max_ratio for
    small sparsity or large eps, so the result is clipped and rebalanced.
    All-equal or non-finite values give the uniform allocation.
    """
    values = _as_float64(values)
    _check_lengths(values, sizes)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must lie in [0, 1], got {eps}")
    scaled = _minmax(values)
    if scaled is None:
        return rebalance(uniform(sizes, sparsity), sizes, sparsity, max_ratio)
    relative = (1.0 - eps) + (2.0 * eps) * scaled
    mean_relative = weighted_mean(relative, sizes)
    if mean_relative <= 0:  # eps == 1 with all weight on the minimum: nothing to scale
        return rebalance(uniform(sizes, sparsity), sizes, sparsity, max_ratio)
    scale = sparsity / mean_relative
    return rebalance(scale * relative, sizes, sparsity, max_ratio)


def sanitize_dsa(values, guards: Guards = DEFAULT_GUARDS) -> Tensor:
    """DSA's own special values (lib/autolayer.py): NaN -> 0 and +-inf -> -1, as float64.
    The fills are `guards`' nan_fill and dsa_inf_fill."""
    return torch.nan_to_num(_as_float64(values), nan=guards.nan_fill, posinf=guards.dsa_inf_fill,
                            neginf=guards.dsa_inf_fill)


def dsa_map(values, sizes, sparsity: float, lam: float, max_ratio: float = DEFAULT_MAX_RATIO) -> Tensor:
    """DSA's map (lliai/DSA lib/prune_all.py): larger value (importance) -> MORE pruning.

    x = minmax(values); x = 1 - x; d = minmax(x) * 2 * lam; density = d - mean_w(d) + (1 - sparsity);
    ratio = 1 - density, i.e. ratio = sparsity + 2 * lam * (minmax(values) - mean_w(minmax(values))).
    The opposite direction of owl_map; mean_w is the parameter-weighted mean (DSA's plain mean
    when blocks are equal-sized). All-equal or non-finite values give the uniform allocation.
    """
    return _lambda_map(values, sizes, sparsity, lam, max_ratio, lambda scaled: 1.0 - scaled)
