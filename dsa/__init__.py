"""dsa: discovering sparsity allocations for LLM pruning.

The Python API (dsa/api.py), imported on first use so that `import dsa.core...` stays light:

    model, tokenizer = dsa.load_model("smollm2-135m")   # or a transformers model you hold
    ratios = dsa.allocate(model, "tanh2-ramp-70", 0.7)  # one ratio per decoder block
    dsa.prune(model, ratios, calib="c4/train", tokenizer=tokenizer)
    dsa.perplexity(model, "wiki/test", tokenizer=tokenizer)
    dsa.load_function("tanh2-ramp-70"); dsa.run_search("quick", {"search": {"generations": 1}})

The search is `dsa.run_search`: `dsa.search` is the package of the search engine (dsa/search/).
"""
import importlib

API = ("load_model", "load_function", "allocate", "prune", "perplexity", "run_config", "run_search")
__all__ = list(API)


def __getattr__(name: str):
    """PEP 562: the API's functions, importing dsa.api (torch, transformers) on first use."""
    if name in API:
        return getattr(importlib.import_module("dsa.api"), name)
    raise AttributeError(f"module 'dsa' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
