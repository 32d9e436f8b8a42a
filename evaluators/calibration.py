"""One calibration pass (Wanda's input-feature norms) and the per-row score orders, both cached.

With each row's weights sorted by score once, pruning at any ratio is a scatter of the first k
indices, so a search re-prunes thousands of times without recomputing a score.
"""
from __future__ import annotations

import hashlib
import sys

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .assets import cache_dir
from .models import LoadedModel

METRICS = ("wanda", "magnitude")


class _StopForward(Exception):
    """Raised after the last block: the LM head's output is not needed for calibration."""


def layer_key(block_index: int, name: str) -> str:
    return f"{block_index}.{name}"


def cache_key(loaded: LoadedModel, *parts) -> str:
    text = "|".join([loaded.fingerprint, *map(str, parts)])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@torch.no_grad()
def _measure_norms(loaded: LoadedModel, windows: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    sums: dict[str, torch.Tensor] = {}
    handles = []

    def recorder(key):
        def hook(module, inputs, output):
            x = inputs[0].detach().flatten(0, -2).float()
            sums[key] = sums.get(key, 0) + (x * x).sum(dim=0)
        return hook

    def stop(module, inputs, output):
        raise _StopForward

    for block in loaded.blocks:
        for name, layer in block.linears.items():
            handles.append(layer.register_forward_hook(recorder(layer_key(block.index, name))))
    handles.append(loaded.model.get_submodule(loaded.blocks[-1].name).register_forward_hook(stop))
    try:
        for start in tqdm(range(0, len(windows), batch_size), desc="calibrating", leave=False):
            try:
                loaded.model(windows[start:start + batch_size].to(loaded.device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return {key: value.sqrt().cpu() for key, value in sums.items()}


def input_norms(loaded: LoadedModel, windows: torch.Tensor, text: str, batch_size: int = 1) -> dict[str, torch.Tensor]:
    """||X_j||_2 of every linear layer's input features over the calibration tokens (cached)."""
    key = cache_key(loaded, "norms", text, tuple(windows.shape), windows.sum().item())
    path = cache_dir() / "calibration" / f"{key}.safetensors"
    if path.exists():
        try:
            return load_file(path)
        except Exception:
            print(f"calibration cache {path} is corrupt; recomputing", file=sys.stderr)
    norms = _measure_norms(loaded, windows, batch_size)
    _atomic_save(norms, path)
    return norms


def score_matrix(weight: torch.Tensor, norm: torch.Tensor | None, metric: str) -> torch.Tensor:
    """Element-wise importance: Wanda |W| * ||X_j|| or magnitude |W| (float32)."""
    if metric == "magnitude":
        return weight.abs().float()
    if metric == "wanda":
        return weight.abs().float() * norm.to(weight.device)[None, :]
    raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")


def row_orders(loaded: LoadedModel, norms: dict[str, torch.Tensor], metric: str) -> dict[str, torch.Tensor]:
    """Per layer, each row's column indices sorted by ascending score (cached; int16 when it fits)."""
    norms_digest = hashlib.sha256(b"".join(norms[k].numpy().tobytes() for k in sorted(norms))).hexdigest()
    key = cache_key(loaded, "orders", metric, norms_digest if metric == "wanda" else "")
    path = cache_dir() / "orders" / f"{key}.safetensors"
    if path.exists():
        try:
            return {k: v.to(loaded.device) for k, v in load_file(path).items()}
        except Exception:
            print(f"score-order cache {path} is corrupt; recomputing", file=sys.stderr)
    orders = sort_rows(loaded, norms, metric)
    _atomic_save({k: v.cpu().contiguous() for k, v in orders.items()}, path)
    return orders


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


def _atomic_save(tensors: dict[str, torch.Tensor], path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp)
    tmp.replace(path)
