"""The sequential driver: block by block, calibration activations flow through the pruned blocks.

This is how Wanda, SparseGPT and ALPS prune in their papers. Each block's statistics come from
inputs that the already pruned earlier blocks produced, so it cannot be cached per ratio the way
the search's dense-activation scores are; it runs once per final model. Every sequential pruner
is a per-layer rule (`Pruner.prune_layer`) called from here.
"""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..capture import InputStats, StopForward
from ..models import LoadedModel
from .base import NM, BlockRatio, Pruner, ratio_of


@torch.no_grad()
def sequential_prune(loaded: LoadedModel, windows: torch.Tensor, ratios: Sequence[BlockRatio], pruner: Pruner,
                     nm: NM = None, batch_size: int = 1) -> None:
    """Prune every block in order at its ratio, or each matrix at its own (ignored for N:M), with a
    sequential pruner's rule."""
    if not pruner.sequential:
        raise ValueError(f"{pruner.name!r} has no per-layer rule for sequential pruning")
    modules, batches = _capture_block_calls(loaded, windows, batch_size)
    hidden = [batch["hidden"] for batch in batches]
    for block, module in tqdm(list(zip(loaded.blocks, modules)), desc=f"{pruner.name} (sequential)", leave=False):
        stats = {name: InputStats(pruner.needs_hessian) for name in block.linears}
        handles = [layer.register_forward_hook(stats[name]) for name, layer in block.linears.items()]
        for h, batch in zip(hidden, batches):
            _run_block(module, h, batch[block.index])
        for handle in handles:
            handle.remove()
        for name, layer in block.linears.items():
            pruner.prune_layer(layer.weight, stats[name], ratio_of(ratios[block.index], name), nm)
        hidden = [_run_block(module, h, batch[block.index]) for h, batch in zip(hidden, batches)]


@torch.no_grad()
def _capture_block_calls(loaded: LoadedModel, windows: torch.Tensor, batch_size: int):
    """Per batch: the first block's hidden states and every block's other call arguments.

    Arguments are captured per block because models differ per layer (Gemma3 alternates sliding
    and global attention masks and rotary tables).
    """
    modules = [loaded.model.get_submodule(b.name) for b in loaded.blocks]
    batches = []
    current: dict = {}

    def pre_hook(index):
        def hook(module, args, kwargs):
            kwargs = dict(kwargs)
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if index == 0:
                current["hidden"] = hidden
            current[index] = (tuple(args[1:]), kwargs)
            if index == len(modules) - 1:
                raise StopForward
        return hook

    handles = [m.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, m in enumerate(modules)]
    try:
        for start in range(0, len(windows), batch_size):
            current = {}
            try:
                loaded.model(windows[start:start + batch_size].to(loaded.device), use_cache=False)
            except StopForward:
                pass
            batches.append(current)
    finally:
        for handle in handles:
            handle.remove()
    return modules, batches


def _run_block(module, hidden, call):
    args, kwargs = call
    out = module(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out
