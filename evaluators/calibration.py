"""One calibration pass (Wanda's input-feature norms) and the per-row score orders, both cached.

With each row's weights sorted by score once, pruning at any ratio is a scatter of the first k
indices, so a search re-prunes thousands of times without recomputing a score.
"""
from __future__ import annotations

import hashlib

import torch
from tqdm.auto import tqdm

from .assets import cache_dir
from dsa.core.storage import cached, load_tensors, save_tensors
from .capture import InputStats, StopForward, raise_stop
from .models import LoadedModel
from .scores import score_matrix


def layer_key(block_index: int, name: str) -> str:
    return f"{block_index}.{name}"


def cache_key(loaded: LoadedModel, *parts) -> str:
    text = "|".join([loaded.fingerprint, *map(str, parts)])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@torch.no_grad()
def _measure_norms(loaded: LoadedModel, windows: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    stats: dict[str, InputStats] = {}
    handles = []
    for block in loaded.blocks:
        for name, layer in block.linears.items():
            stats[layer_key(block.index, name)] = InputStats()
            handles.append(layer.register_forward_hook(stats[layer_key(block.index, name)]))
    # The LM head's output is not needed: stop after the last block.
    handles.append(loaded.model.get_submodule(loaded.blocks[-1].name).register_forward_hook(raise_stop))
    try:
        for start in tqdm(range(0, len(windows), batch_size), desc="calibrating", leave=False):
            try:
                loaded.model(windows[start:start + batch_size].to(loaded.device), use_cache=False)
            except StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return {key: stat.norm.cpu() for key, stat in stats.items() if stat.sq is not None}


def input_norms(loaded: LoadedModel, windows: torch.Tensor, text: str, batch_size: int = 1) -> dict[str, torch.Tensor]:
    """||X_j||_2 of every linear layer's input features over the calibration tokens (cached)."""
    key = cache_key(loaded, "norms", text, tuple(windows.shape), windows.sum().item())
    return cached(cache_dir() / "calibration" / f"{key}.safetensors", load_tensors,
                  lambda: _measure_norms(loaded, windows, batch_size), save_tensors, "calibration")


def row_orders(loaded: LoadedModel, norms: dict[str, torch.Tensor], metric: str) -> dict[str, torch.Tensor]:
    """Per layer, each row's column indices sorted by ascending score (cached; int16 when it fits)."""
    norms_digest = hashlib.sha256(b"".join(norms[k].numpy().tobytes() for k in sorted(norms))).hexdigest()
    key = cache_key(loaded, "orders", metric, norms_digest if metric == "wanda" else "")
    orders = cached(cache_dir() / "orders" / f"{key}.safetensors", load_tensors,
                    lambda: {k: v.cpu().contiguous() for k, v in sort_rows(loaded, norms, metric).items()},
                    save_tensors, "score-order")
    return {k: v.to(loaded.device) for k, v in orders.items()}


def sort_rows(loaded: LoadedModel, norms: dict[str, torch.Tensor], metric: str) -> dict[str, torch.Tensor]:
    """Argsort of every row's scores, ascending (the computation behind `row_orders`)."""
    orders = {}
    for block in tqdm(loaded.blocks, desc=f"sorting {metric} scores", leave=False):
        for name, layer in block.linears.items():
            k = layer_key(block.index, name)
            scores = score_matrix(layer.weight.detach(), norms.get(k), metric)
            index_dtype = torch.int16 if scores.shape[1] < 2**15 else torch.int32
            orders[k] = torch.argsort(scores, dim=1, stable=True).to(index_dtype)
    return orders

