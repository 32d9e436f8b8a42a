"""The final pruners, one per file, and the registry the session dispatches on by name.

A new pruner is its file (a `base.Pruner`: a per-layer rule for the sequential driver, or a
model-wide function) and one entry in REGISTRY.
"""
from dsa.core.errors import UserError
from .alps import ALPS
from .base import NM, Pruner, block_sizes, parse_structure, zero_fraction
from .cached import WANDA_CACHED, CachedPruner
from .magnitude import MAGNITUDE, MAGNITUDE_ROW
from .sequential import sequential_prune
from .sparsegpt import SPARSEGPT
from .wanda import WANDA

# magnitude: one threshold per matrix (the reference code's); magnitude-row: per output row.
REGISTRY = {pruner.name: pruner for pruner in (WANDA, SPARSEGPT, ALPS, MAGNITUDE, MAGNITUDE_ROW)}
PRUNERS = tuple(REGISTRY)
# Wanda `sequential` propagates calibration activations through the pruned blocks (the paper's
# procedure); `cached` uses the dense-model scores the search uses. The form names only Wanda's:
# the others always prune one way.
WANDA_FORMS = ("sequential", "cached")


def pruner_named(name: str, wanda_form: str = "sequential") -> Pruner:
    """The registered pruner `name` (Wanda in the asked form); a bad name is the user's error."""
    if name not in REGISTRY:
        raise UserError(f"unknown pruner {name!r}: use one of {', '.join(PRUNERS)}")
    if wanda_form not in WANDA_FORMS:
        raise UserError(f"unknown wanda form {wanda_form!r}: use one of {', '.join(WANDA_FORMS)}")
    return WANDA_CACHED if name == "wanda" and wanda_form == "cached" else REGISTRY[name]


__all__ = ["NM", "PRUNERS", "REGISTRY", "WANDA_FORMS", "CachedPruner", "Pruner", "block_sizes",
           "parse_structure", "pruner_named", "sequential_prune", "zero_fraction"]
