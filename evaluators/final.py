"""Prune a workbench's model at given per-block ratios with a final pruner, and measure it."""
from __future__ import annotations

from typing import Sequence

from .errors import UserError
from .pruning import zero_fraction
from .sequential import sequential_prune
from .workbench import Workbench

PRUNERS = ("wanda", "sparsegpt", "magnitude")
WANDA_FORMS = ("sequential", "cached")


def prune_model(bench: Workbench, ratios: Sequence[float], pruner: str = "wanda",
                nm: tuple[int, int] | None = None, wanda_form: str = "sequential") -> float:
    """Restore the dense weights, prune, and return the achieved sparsity (zeros counted).

    Wanda `sequential` propagates calibration activations through the pruned blocks (the
    paper's procedure); `cached` uses the dense-model scores the search uses. Magnitude needs
    no activations. SparseGPT is always sequential (its updates change later inputs).
    """
    if pruner not in PRUNERS:
        raise UserError(f"unknown pruner {pruner!r}: use one of {', '.join(PRUNERS)}")
    if wanda_form not in WANDA_FORMS:
        raise UserError(f"unknown wanda form {wanda_form!r}: use one of {', '.join(WANDA_FORMS)}")
    if pruner == "magnitude" and bench.config.metric != "magnitude":
        raise UserError("--pruner magnitude needs --metric magnitude (the score orders it prunes by)")
    bench.pruner.restore()
    sequential = pruner == "sparsegpt" or (pruner == "wanda" and wanda_form == "sequential")
    if sequential:
        sequential_prune(bench.loaded, bench.calib, ratios, pruner, nm, bench.config.batch_size)
        bench.pruner.mark_modified()
    elif nm:
        bench.pruner.prune_n_m(*nm)
    else:
        bench.pruner.prune(ratios)
    return zero_fraction(bench.loaded)


def evaluate(bench: Workbench, texts: Sequence[str], windows: int, label: str = "") -> dict[str, float]:
    """Perplexity of the model as it is now on each named text."""
    return {text: bench.perplexity(text, windows, progress=f"{label} {text}".strip()) for text in texts}
