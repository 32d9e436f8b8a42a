"""Baseline layer-wise allocations as pure functions over per-block data.

The evaluation pipeline computes what each method needs per block (Wanda score matrices,
weights, shapes) and dispatches; nothing here touches a model. Every method except
uniform returns ``(ratios, metric)``: float64 vectors with one entry per block, the ratios
meeting sum(sizes * ratios) == sparsity * sum(sizes) with each ratio in [0, max_ratio].
"""

import torch
from torch import Tensor

from dsa.core.constants import ALPHA_EPS, ALPHA_MODE, DSA_LAMBDA, OWL_LAMBDA, OWL_M
from dsa.core.numerics import block_alpha, element_count, element_sum, outlier_fraction
from .ratios import DEFAULT_MAX_RATIO, alpha_map, dsa_map, owl_map, rebalance, sanitize_dsa, uniform

# Above this many scores the global threshold is estimated on a subsample: the exact
# kthvalue needs the float32 concatenation (~0.5 GB at 2**27 elements) plus a working copy.
MAX_EXACT_SCORES = 2**27
_SUBSAMPLE_SEED = 0


def _check_block_count(blocks, sizes) -> None:
    if len(blocks) != torch.as_tensor(sizes).numel():
        raise ValueError(f"got {len(blocks)} blocks for {torch.as_tensor(sizes).numel()} sizes")


def uniform_ratios(sizes, sparsity: float) -> Tensor:
    """Every block pruned at the global sparsity (no metric)."""
    return uniform(sizes, sparsity)


def owl_ratios(block_scores: list[list[Tensor]], sizes, sparsity: float, m: float = OWL_M,
               lam: float = OWL_LAMBDA, max_ratio: float = DEFAULT_MAX_RATIO) -> tuple[Tensor, Tensor]:
    """OWL: metric = fraction of a block's Wanda scores above m * their mean.

    More outliers (more important block) -> less pruning, ratios within sparsity +- lam.
    """
    _check_block_count(block_scores, sizes)
    metric = torch.tensor([outlier_fraction(mats, m=m) for mats in block_scores], dtype=torch.float64)
    return owl_map(metric, sizes, sparsity, lam, max_ratio), metric


def alphapruning_ratios(block_weights: list[list[Tensor]] | None, sizes, sparsity: float,
                        eps: float = ALPHA_EPS, mode: str = ALPHA_MODE, alphas=None,
                        max_ratio: float = DEFAULT_MAX_RATIO) -> tuple[Tensor, Tensor]:
    """AlphaPruning: metric = mean PL_Alpha_Hill of a block's weight matrices.

    Larger alpha (lighter-tailed spectrum, less trained) -> more pruning. ``alphas`` (one
    per block, e.g. from a cache) skips the SVDs; ``block_weights`` may then be None.
    """
    if alphas is not None:
        metric = torch.as_tensor(alphas, dtype=torch.float64).reshape(-1)
    else:
        if block_weights is None:
            raise ValueError("pass block_weights or precomputed alphas")
        metric = torch.tensor([block_alpha(mats, mode=mode) for mats in block_weights], dtype=torch.float64)
    if metric.numel() != torch.as_tensor(sizes).numel():
        raise ValueError(f"got {metric.numel()} alphas for {torch.as_tensor(sizes).numel()} blocks")
    return alpha_map(metric, sizes, sparsity, eps, max_ratio), metric


def er_block_scores(block_shapes: list[list[tuple[int, int]]]) -> Tensor:
    """Parameter-weighted mean of (rows + cols) / (rows * cols) over each block's matrices.

    Weighting by rows * cols cancels the denominator: sum(rows + cols) / sum(rows * cols).
    """
    scores = []
    for shapes in block_shapes:
        perimeter = sum(rows + cols for rows, cols in shapes)
        area = sum(rows * cols for rows, cols in shapes)
        if area <= 0:
            raise ValueError(f"block with no weights: {shapes}")
        scores.append(perimeter / area)
    return torch.tensor(scores, dtype=torch.float64)


def _erk_densities(scores: Tensor, sizes, density: float) -> Tensor:
    """Densities k * score with mean_w == density, saturating blocks at 1 (RigL's ERK).

    A block whose density would exceed 1 is made dense and k is re-solved over the rest;
    each pass saturates at least one block, so it ends within len(scores) passes.
    """
    sizes = torch.as_tensor(sizes, dtype=torch.float64).reshape(-1)
    target = density * float(sizes.sum())
    dense = torch.zeros_like(scores, dtype=torch.bool)
    while True:
        free_mass = float((sizes * scores)[~dense].sum())
        if free_mass <= 0:
            return torch.where(dense, 1.0, 0.0).to(torch.float64)
        k = (target - float(sizes[dense].sum())) / free_mass
        densities = torch.where(dense, torch.ones_like(scores), k * scores)
        overflow = (~dense) & (densities > 1.0)
        if not bool(overflow.any()):
            return densities
        dense |= overflow


def er_ratios(block_shapes: list[list[tuple[int, int]]], sizes, sparsity: float,
              max_ratio: float = DEFAULT_MAX_RATIO) -> tuple[Tensor, Tensor]:
    """Erdos-Renyi: density proportional to (rows + cols) / (rows * cols).

    Larger metric (small or thin matrices) -> denser -> less pruning.
    """
    _check_block_count(block_shapes, sizes)
    metric = er_block_scores(block_shapes)
    densities = _erk_densities(metric, sizes, 1.0 - float(sparsity))
    return rebalance(1.0 - densities, sizes, sparsity, max_ratio), metric


def _subsample(tensors: list[Tensor], fraction: float, generator: torch.Generator) -> Tensor:
    """A uniform random sample of about ``fraction`` of all elements, as float32."""
    parts = []
    for tensor in tensors:
        flat = tensor.reshape(-1)
        count = max(1, round(flat.numel() * fraction))
        parts.append(flat[torch.randint(flat.numel(), (count,), generator=generator)].float())
    return torch.cat(parts)


def _global_threshold(tensors: list[Tensor], sparsity: float, max_exact: int) -> float | None:
    """The score of the k-th lowest element, k = round(sparsity * total); None when k == 0.

    Exact (kthvalue over the float32 concatenation) up to ``max_exact`` elements; above it
    the same quantile of a seeded uniform subsample of ``max_exact`` elements.
    """
    total = sum(t.numel() for t in tensors)
    if round(sparsity * total) == 0:
        return None
    if total <= max_exact:
        pool = torch.cat([t.reshape(-1).float() for t in tensors])
    else:
        generator = torch.Generator().manual_seed(_SUBSAMPLE_SEED)
        pool = _subsample(tensors, max_exact / total, generator)
    k = min(pool.numel(), max(1, round(sparsity * pool.numel())))
    return float(torch.kthvalue(pool, k).values)


def _pruned_fractions(block_scores: list[list[Tensor]], sparsity: float, max_exact: int) -> Tensor:
    """Per block, the fraction of its scores at or below one global threshold.

    Ties at the threshold are all counted, so the result can overshoot the budget
    slightly; callers rebalance.
    """
    flat = [t for mats in block_scores for t in mats]
    threshold = _global_threshold(flat, float(sparsity), max_exact)
    fractions = []
    for mats in block_scores:
        count = sum(t.numel() for t in mats)
        pruned = 0 if threshold is None else sum(int((t.float() <= threshold).sum()) for t in mats)
        fractions.append(pruned / count)
    return torch.tensor(fractions, dtype=torch.float64)


def global_ratios(block_scores: list[list[Tensor]], sizes, sparsity: float,
                  max_exact: int = MAX_EXACT_SCORES,
                  max_ratio: float = DEFAULT_MAX_RATIO) -> tuple[Tensor, Tensor]:
    """Global: one threshold over all blocks' scores; a block's ratio is its share below it.

    Blocks whose scores are larger (more important) than the rest -> less pruning.
    metric = those raw ratios, before rebalancing (ties, max_ratio).
    """
    _check_block_count(block_scores, sizes)
    metric = _pruned_fractions(block_scores, sparsity, max_exact)
    return rebalance(metric, sizes, sparsity, max_ratio), metric


def lamp_scores(weight: Tensor) -> Tensor:
    """LAMP score of each weight (flattened, ascending order): w_u^2 / sum_{v >= u} w_v^2.

    Scores are non-decreasing along the sorted order and the largest weight scores 1.
    The suffix sums run in float64; an all-zero matrix scores 0 everywhere.
    """
    squared = weight.reshape(-1).double().square().sort().values
    suffix = squared.flip(0).cumsum(0).flip(0)
    scores = torch.where(suffix > 0, squared / suffix.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return scores.float()


def lamp_ratios(block_weights: list[list[Tensor]], sizes, sparsity: float,
                max_exact: int = MAX_EXACT_SCORES,
                max_ratio: float = DEFAULT_MAX_RATIO) -> tuple[Tensor, Tensor]:
    """LAMP (Lee et al. 2021): one global threshold on per-matrix LAMP scores.

    A weight is important relative to the larger weights of its own matrix, so blocks
    whose mass sits in few large weights keep more; metric = the raw ratios.
    """
    _check_block_count(block_weights, sizes)
    block_lamp = [[lamp_scores(w) for w in mats] for mats in block_weights]
    metric = _pruned_fractions(block_lamp, sparsity, max_exact)
    return rebalance(metric, sizes, sparsity, max_ratio), metric


def atp_legal_step(n_blocks: int, sparsity: float) -> float:
    """ATP's largest common difference: every ratio stays within [0, 1] (its 'Illegal beta' check)."""
    if n_blocks < 2:
        return 0.0
    return min(2 * sparsity, 2 * (1 - sparsity)) / (n_blocks - 1)


def atp_ratios(sizes, sparsity: float, step: float,
               max_ratio: float = DEFAULT_MAX_RATIO) -> tuple[Tensor, Tensor]:
    """ATP (ICML 2025): sparsity rises linearly with depth, an arithmetic progression of mean S.

    ratio_i = S - step * (L - 1) / 2 + i * step (its code, atp_score); the one hyper-parameter,
    the common difference `step`, is chosen by a small search on validation text (the caller's
    job). metric = the block's relative depth i / (L - 1). With equal-sized blocks the plain
    mean is the parameter-weighted budget; otherwise one additive shift restores it.
    """
    n = torch.as_tensor(sizes).reshape(-1).numel()
    if step < 0 or step > atp_legal_step(n, sparsity) + 1e-12:
        raise ValueError(f"ATP step {step} is outside [0, {atp_legal_step(n, sparsity):.5f}] for {n} blocks")
    # S - step * (L - 1) / 2 + i * step is DSA's map of the relative depth with spread
    # lam = step * (L - 1) / 2; computed that way, the search's ATP seeds reproduce it.
    depth = torch.tensor([i / (n - 1) if n > 1 else 0.0 for i in range(n)], dtype=torch.float64)
    return dsa_map(depth, sizes, sparsity, step * (n - 1) / 2, max_ratio), depth


def atp_grid(n_blocks: int, sparsity: float, lambdas) -> list[tuple[float, float]]:
    """ATP's grid as (lam, step = 2 * lam / (L - 1)) pairs: the depth ramp of a DSA map with
    spread `lam` (so a searched function can reproduce each point), the legal ones only."""
    if n_blocks < 2:
        return [(0.0, 0.0)]
    legal = atp_legal_step(n_blocks, sparsity)
    return [(lam, 2 * lam / (n_blocks - 1)) for lam in lambdas if 2 * lam / (n_blocks - 1) <= legal + 1e-12]


def _dsa_abslog(matrix: Tensor) -> Tensor:
    """DSA's ABSLOG (lib/autolayer.py element_wise_abslog_op): 0 set to 1, then ln|x| (float32)."""
    x = matrix.float()
    return torch.where(x == 0, torch.ones_like(x), x).abs_().log_()


def dsa_published_metric(block_scores: list[list[Tensor]]) -> Tensor:
    """DSA's published function W:(ABSLOG)-(VAR)-(ATAN,ASIN) (its README), one value per block.

    W = the block's Wanda scores, concatenated; VAR is torch.var (unbiased); ASIN of a value
    outside [-1, 1] is NaN, which DSA's special-value rule turns into 0 (inf into -1).
    """
    values = []
    for mats in block_scores:
        logs = [_dsa_abslog(m) for m in mats]
        n = element_count(logs)
        mu = element_sum(logs) / n
        var = element_sum(logs, lambda c: (c - mu).square_()) / (n - 1)
        values.append(var)
    return sanitize_dsa(torch.asin(torch.atan(torch.tensor(values, dtype=torch.float64))))


def dsa_published_ratios(block_scores: list[list[Tensor]], sizes, sparsity: float, lam: float = DSA_LAMBDA,
                         max_ratio: float = DEFAULT_MAX_RATIO) -> tuple[Tensor, Tensor]:
    """DSA's published function with DSA's own map: larger importance -> MORE pruning."""
    _check_block_count(block_scores, sizes)
    metric = dsa_published_metric(block_scores)
    return dsa_map(metric, sizes, sparsity, lam, max_ratio), metric
