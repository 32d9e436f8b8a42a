"""The baselines' hyper-parameters as their authors' code sets them: one place, read by every module."""

OWL_M = 5.0          # OWL: a score is an outlier above M times the block's mean score (README)
OWL_LAMBDA = 0.08    # OWL: ratios within sparsity +- lambda
# AlphaPruning: ratios within (1 +- eps) times the scale; its scripts (scripts/llama_7b.sh) use
# 0.2 with Wanda and SparseGPT and 0.3 with magnitude.
ALPHA_EPS_BY_PRUNER = {"wanda": 0.2, "sparsegpt": 0.2, "magnitude": 0.3, "magnitude-row": 0.3}
ALPHA_EPS = ALPHA_EPS_BY_PRUNER["wanda"]
ALPHA_MODE = "peak"  # AlphaPruning: xmin at the ESD's histogram peak (PL_Alpha_Hill)
DSA_LAMBDA = 0.08    # DSA: its map's spread (--Lamda), as OWL's
DLP_ALPHA = 0.15     # DLP: ratios within sparsity +- alpha (run.py, scripts/llama_7b.sh)
# ATP: its common difference is found by a few trials; our grid is the depth ramps of DSA's map
# with these spreads (step = 2 * lambda / (L - 1)), so a searched function can reproduce each.
ATP_LAMBDAS = (0.04, 0.08, 0.12, 0.15, 0.2, 0.25)


def alpha_eps_for(pruner: str) -> float:
    """AlphaPruning's eps for a final pruner (or search metric), as its scripts pair them."""
    return ALPHA_EPS_BY_PRUNER.get(pruner, ALPHA_EPS)
