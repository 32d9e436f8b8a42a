"""Baseline allocations computed on a loaded model: gathers each method's per-block inputs."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import torch

from evaluators.assets import cache_dir
from evaluators.errors import UserError
from evaluators.workbench import Workbench

from . import baselines

METHODS = ("uniform", "global", "er", "owl", "alphapruning", "lamp")


@dataclass(frozen=True)
class BaselineOptions:
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    alpha_eps: float = 0.3
    alpha_mode: str = "peak"


def block_alphas(bench: Workbench, mode: str = "peak") -> torch.Tensor:
    """Mean PL_Alpha_Hill per block; the SVDs run once per model and are cached as JSON."""
    from search_space.reduction import block_alpha

    path = cache_dir() / "spectra" / f"{bench.loaded.fingerprint}-{mode}.json"
    if path.exists():
        try:
            return torch.tensor(json.loads(path.read_text())["alphas"], dtype=torch.float64)
        except (ValueError, KeyError):
            print(f"alpha cache {path} is corrupt; recomputing", file=sys.stderr)
    start = time.perf_counter()
    alphas = [block_alpha(bench.dense_weights(i), mode=mode) for i in range(len(bench.blocks))]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"alphas": alphas, "mode": mode, "seconds": time.perf_counter() - start}))
    tmp.replace(path)
    return torch.tensor(alphas, dtype=torch.float64)


def baseline_ratios(method: str, bench: Workbench, sparsity: float,
                    options: BaselineOptions = BaselineOptions()) -> tuple[list[float], list[float] | None]:
    """Per-block ratios meeting the parameter-weighted budget, and the per-block metric if any."""
    if not 0.0 < sparsity < 1.0:
        raise UserError(f"sparsity {sparsity} is outside (0, 1)")
    sizes = bench.sizes
    n_blocks = len(bench.blocks)
    if method == "uniform":
        return baselines.uniform_ratios(sizes, sparsity).tolist(), None
    if method == "owl":
        ratios, metric = baselines.owl_ratios([bench.block_scores(i) for i in range(n_blocks)], sizes,
                                              sparsity, m=options.owl_m, lam=options.owl_lambda)
    elif method == "alphapruning":
        ratios, metric = baselines.alphapruning_ratios(None, sizes, sparsity, eps=options.alpha_eps,
                                                       alphas=block_alphas(bench, options.alpha_mode))
    elif method == "er":
        shapes = [[tuple(layer.weight.shape) for layer in b.linears.values()] for b in bench.blocks]
        ratios, metric = baselines.er_ratios(shapes, sizes, sparsity)
    elif method == "global":
        ratios, metric = baselines.global_ratios([bench.block_scores(i) for i in range(n_blocks)], sizes, sparsity)
    elif method == "lamp":
        ratios, metric = baselines.lamp_ratios([bench.dense_weights(i) for i in range(n_blocks)], sizes, sparsity)
    else:
        raise UserError(f"unknown allocation {method!r}: use one of {', '.join(METHODS)}")
    return ratios.tolist(), metric.tolist()
