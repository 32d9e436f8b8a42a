"""The baselines' hyper-parameters as their authors' code sets them: one place, read by every module."""

OWL_M = 5.0          # OWL: a score is an outlier above M times the block's mean score (README)
OWL_LAMBDA = 0.08    # OWL: ratios within sparsity +- lambda
ALPHA_EPS = 0.3      # AlphaPruning: ratios within (1 +- eps) times the scale
ALPHA_MODE = "peak"  # AlphaPruning: xmin at the ESD's histogram peak (PL_Alpha_Hill)
