"""Baseline allocations computed on a loaded model: gathers each method's per-block inputs."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import torch

from evaluators.assets import cache_dir
from dsa.core.storage import cached
from dsa.core.errors import UserError
from evaluators.calibrated import CalibratedModel

from . import baselines
from dsa.core.constants import ALPHA_EPS, ALPHA_MODE, DLP_ALPHA, DSA_LAMBDA, OWL_LAMBDA, OWL_M
from .dlp import dlp_ratios
from dsa.core.numerics import block_alpha

METHODS = ("uniform", "global", "er", "owl", "alphapruning", "lamp", "dsa-published", "atp", "dlp", "dlp-median")
# The methods that read only the blocks' parameter counts and shapes (ATP also its step): computable
# on a model's architecture alone (evaluators.architecture.Layout), without its weights.
SHAPE_METHODS = ("uniform", "er", "atp")


@dataclass(frozen=True)
class BaselineOptions:
    owl_m: float = OWL_M
    owl_lambda: float = OWL_LAMBDA
    alpha_eps: float = ALPHA_EPS
    alpha_mode: str = ALPHA_MODE
    dlp_alpha: float = DLP_ALPHA
    atp_step: float | None = None  # chosen on validation text by the caller (apply.py, the search)


def block_alphas(calibrated: CalibratedModel, mode: str = ALPHA_MODE) -> torch.Tensor:
    """Mean PL_Alpha_Hill per block; the SVDs run once per model and are cached as JSON."""
    def checksum(alphas) -> str:
        return hashlib.sha256(json.dumps(alphas).encode()).hexdigest()

    def compute():
        start = time.perf_counter()
        alphas = [block_alpha(calibrated.dense_weights(i), mode=mode) for i in range(len(calibrated.blocks))]
        return {"alphas": alphas, "mode": mode, "seconds": time.perf_counter() - start, "sha256": checksum(alphas)}

    def load(path):
        entry = json.loads(path.read_text())
        if len(entry["alphas"]) != len(calibrated.blocks) or entry.get("sha256") != checksum(entry["alphas"]):
            raise ValueError("content does not match its checksum")
        return entry

    path = cache_dir() / "spectra" / f"{calibrated.loaded.fingerprint}-{mode}-v2.json"  # v2: single-thread SVDs
    entry = cached(path, load, compute, lambda value, tmp: tmp.write_text(json.dumps(value)), "alpha")
    return torch.tensor(entry["alphas"], dtype=torch.float64)


def baseline_ratios(method: str, calibrated: CalibratedModel, sparsity: float,
                    options: BaselineOptions = BaselineOptions()) -> tuple[list[float], list[float] | None]:
    """Per-block ratios meeting the parameter-weighted budget, and the per-block metric if any.
    For SHAPE_METHODS, `calibrated` may be anything with `sizes` and `blocks` (a Layout)."""
    if not 0.0 < sparsity < 1.0:
        raise UserError(f"sparsity {sparsity} is outside (0, 1)")
    sizes = calibrated.sizes
    n_blocks = len(calibrated.blocks)
    if method == "uniform":
        return baselines.uniform_ratios(sizes, sparsity).tolist(), None
    if method == "owl":
        ratios, metric = baselines.owl_ratios([calibrated.block_scores(i) for i in range(n_blocks)], sizes,
                                              sparsity, m=options.owl_m, lam=options.owl_lambda)
    elif method == "alphapruning":
        ratios, metric = baselines.alphapruning_ratios(None, sizes, sparsity, eps=options.alpha_eps,
                                                       alphas=block_alphas(calibrated, options.alpha_mode))
    elif method == "er":
        shapes = [[tuple(layer.weight.shape) for layer in b.linears.values()] for b in calibrated.blocks]
        ratios, metric = baselines.er_ratios(shapes, sizes, sparsity)
    elif method == "global":
        ratios, metric = baselines.global_ratios([calibrated.block_scores(i) for i in range(n_blocks)], sizes, sparsity)
    elif method == "lamp":
        ratios, metric = baselines.lamp_ratios([calibrated.dense_weights(i) for i in range(n_blocks)], sizes, sparsity)
    elif method == "dsa-published":
        ratios, metric = baselines.dsa_published_ratios([calibrated.block_scores(i) for i in range(n_blocks)], sizes,
                                                        sparsity, lam=DSA_LAMBDA)
    elif method == "atp":
        if options.atp_step is None:
            raise UserError("ATP needs its common difference (chosen on validation text): set atp_step")
        ratios, metric = baselines.atp_ratios(sizes, sparsity, options.atp_step)
    elif method in ("dlp", "dlp-median"):
        statistic = "median" if method == "dlp-median" else "mean"
        ratios, metric = dlp_ratios([calibrated.block_scores(i) for i in range(n_blocks)], sizes, sparsity,
                                    alpha=options.dlp_alpha, statistic=statistic)
    else:
        raise UserError(f"unknown allocation {method!r}: use one of {', '.join(METHODS)}")
    return ratios.tolist(), metric.tolist()
