"""DLP (Chen et al., ICML 2025, "DLP: Dynamic Layerwise Pruning in Large Language Models").

Pure functions over per-block data: nothing here touches a model.

The rule
--------
For block (Transformer layer) l, pool the Wanda scores A_ij = |W_ij| * ||X_j||_2 of all its
linear layers (concatenated and flattened into one vector) and take

    U_l = |median(A)|                      "absolute unimportance" (larger = more redundant)
    I_l = 1 - U_l / sum_k U_k              "relative importance distribution" (RID)
    d_l = (I_l - min I) / (max I - min I) * 2 * alpha
    R_l = S + mean(d) - d_l                sparsity of block l (S = target sparsity)

so the plain mean of R is S and R spans at most 2 * alpha. The normalisation by sum U and
the inversion cancel in the min-max step, which gives the closed form used in the tests:

    R_l = S + 2 * alpha * (U_l - mean(U)) / (max U - min U).

Direction: a larger median score means a more redundant block -> MORE pruning; the block
DLP considers most important (largest I_l, smallest U_l) gets the LOWEST ratio. On LLaMA
models U grows with depth (activation norms grow), so sparsity rises with depth.

Source (github.com/ironartisan/DLP, commit 31d480f, file lib/prune.py)
-------------------------------------------------------------------
- get_dlp_ratios, lines 12-99: Wanda score |W| * sqrt(scaler_row) per linear (l. 69), all
  of a block's scores concatenated and flattened (l. 80), statistic (l. 81), abs (l. 82),
  ``ratio_conn = 1 - score / sum(scores)`` (l. 85-86), min-max * 2 * alpha (l. 92),
  ``density = scaled - mean(scaled) + (1 - sparsity)`` (l. 93); the block sparsity used by
  prune_wanda_dlp / prune_mag_dlp / prune_sparsegpt_dlp is ``1 - density`` (l. 311, 235,
  497), with a non-positive value replaced by 0.01 (l. 313-314) and no upper clip.
- get_dlp_structure_ratios, l. 182-193: the selectable statistics sum/mean/max/median/std/
  var (run.py l. 63: ``--strategy`` default "median").
- Defaults: alpha = 0.15 (run.py l. 61; scripts/llama_7b.sh, llama_13b.sh, llama2_7b.sh,
  llama2_13b.sh: ALPHA=0.15, wanda_dlp, 0.7, unstructured); the shipped
  ratios/*_sparsity_0.7_alpha_0.15.json densities have mean 0.30 and span 0.30 = 2 * alpha.
  Calibration in the paper/code: 128 C4 sequences of 2048 tokens, dense-model activations.

Gaps and how they are filled
----------------------------
- Statistic: the paper (arXiv 2505.23807, method section and its ablation on LLaMA-1-7B at
  70 %: Wanda median 20.40 vs mean/sum 21.03; read here through a detailed summary of the
  paper, en.papernotes.org, as the arXiv text past the abstract was not reachable) specifies
  the MEDIAN, and ``--strategy`` defaults to "median", but the public get_dlp_ratios (the
  path run.py uses for wanda_dlp, l. 81) hard-codes the MEAN.
  Default here: ``statistic="mean"``, the public code path (baselines follow their authors'
  code); ``statistic="median"`` is the paper's method, offered as the baseline `dlp-median`.
  "median" is torch.median (the lower of the two middle values for an even count), as in the
  code; "std"/"var" are unbiased (torch defaults), as in the code. The mean is the streaming
  float64 mean of dsa.core.numerics, the same number the search's `mean` reduction gives,
  so the `dlp` seed of the search reproduces this baseline exactly.
- Budget: DLP centres with the plain mean (budget = mean ratio). The project's budget is
  parameter-weighted; ``rebalance`` applies one additive shift (a no-op for equal-sized
  blocks, as in LLaMA) and clips to [0, max_ratio] (DLP's code only lifts ratios <= 0 to
  0.01, which breaks its budget; it has no upper clip).
- All-equal (or non-finite) statistics make DLP's min-max divide by zero (NaN in the
  code); here they give the uniform allocation.
- The scale of ||X_j|| (the code's running mean over sequences vs. a plain norm) is one
  constant factor for all blocks and cancels, as does any common scale of the scores.
"""

import torch
from torch import Tensor

from dsa.core.constants import DLP_ALPHA
from dsa.core.numerics import element_mean
from .ratios import DEFAULT_MAX_RATIO, dsa_map, sanitize_dsa

DEFAULT_STATISTIC = "mean"
STATISTICS = ("median", "mean", "sum", "max", "std", "var")


def _pooled(matrices: list[Tensor]) -> Tensor:
    """A block's score matrices concatenated and flattened (float32, on CPU), as in DLP."""
    if not matrices:
        raise ValueError("a block needs at least one score matrix")
    return torch.cat([m.detach().reshape(-1).to(device="cpu", dtype=torch.float32) for m in matrices])


def _statistic(pooled: Tensor, statistic: str) -> float:
    if pooled.numel() == 0:
        raise ValueError("a block has no scores")
    if statistic == "median":
        return float(torch.median(pooled))
    if statistic == "sum":
        return float(pooled.double().sum())
    if statistic == "max":
        return float(pooled.max())
    if statistic == "std":
        return float(pooled.double().std())
    if statistic == "var":
        return float(pooled.double().var())
    raise ValueError(f"unknown DLP statistic {statistic!r}: use one of {', '.join(STATISTICS)}")


def dlp_metric(block_scores: list[list[Tensor]], statistic: str = DEFAULT_STATISTIC) -> Tensor:
    """DLP's absolute unimportance U per block: |statistic| of the block's pooled Wanda scores.

    ``block_scores[i]`` holds block i's element-wise Wanda score matrices |W_ij| * ||X_j||.
    Larger U = more redundant = more pruning. Returns a float64 vector, one entry per block.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown DLP statistic {statistic!r}: use one of {', '.join(STATISTICS)}")
    values = []
    for matrices in block_scores:
        if statistic == "mean":  # streamed, as the search's `mean` reduction computes it
            values.append(abs(element_mean(matrices)))
            continue
        pooled = _pooled(matrices)
        values.append(abs(_statistic(pooled, statistic)))
        del pooled
    return torch.tensor(values, dtype=torch.float64)


def dlp_map(unimportance, sparsity: float, alpha: float = DLP_ALPHA) -> Tensor | None:
    """DLP's map, literally: RID, min-max * 2 * alpha, centred on the plain mean.

    Returns the unclipped ratios S + mean(d) - d, or None when U carries no ranking.
    """
    u = torch.as_tensor(unimportance, dtype=torch.float64).reshape(-1)
    if not bool(torch.isfinite(u).all()):
        return None
    total = u.sum()
    if total <= 0:
        return None
    importance = 1.0 - u / total
    low, high = importance.min(), importance.max()
    span = high - low
    if not bool(torch.isfinite(span)) or span <= 0:
        return None
    d = (importance - low) / span * (2.0 * alpha)
    density = d - d.mean() + (1.0 - sparsity)
    return 1.0 - density


def dlp_ratios(block_scores: list[list[Tensor]], sizes, sparsity: float,
               alpha: float = DLP_ALPHA, statistic: str = DEFAULT_STATISTIC,
               max_ratio: float = DEFAULT_MAX_RATIO, metric: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """DLP's per-block sparsity ratios and its metric (the unimportance U).

    ``metric`` (one U per block, e.g. from a cache) skips the statistics; ``block_scores``
    may then be None. Ratios meet sum(sizes * ratios) == sparsity * sum(sizes), each in
    [0, max_ratio]; with equal sizes and no clipping they are DLP's ratios unchanged.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be non-negative, got {alpha}")
    n_blocks = torch.as_tensor(sizes).numel()
    if metric is None:
        if block_scores is None:
            raise ValueError("pass block_scores or a precomputed metric")
        if len(block_scores) != n_blocks:
            raise ValueError(f"got {len(block_scores)} blocks for {n_blocks} sizes")
        metric = dlp_metric(block_scores, statistic)
    else:
        metric = torch.as_tensor(metric, dtype=torch.float64).reshape(-1)
        if metric.numel() != n_blocks:
            raise ValueError(f"got {metric.numel()} metric values for {n_blocks} sizes")
    # DLP's map equals DSA's (min-max, larger U -> more pruning, spread 2 * alpha, mean S);
    # computing it through dsa_map makes the search's `dlp` seed reproduce it bit for bit.
    # (dlp_map above is the literal form, kept as the reference the tests check against.)
    return dsa_map(sanitize_dsa(metric), sizes, sparsity, alpha, max_ratio), metric
