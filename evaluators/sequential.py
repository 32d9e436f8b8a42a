"""Faithful final pruning: block by block, calibration activations flow through the pruned blocks.

This is how Wanda and SparseGPT prune in their papers. Each block's statistics come from inputs
that the already pruned earlier blocks produced, so it cannot be cached per ratio the way the
search's dense-activation scores are; it runs once per final model.
"""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from .alps import alps_prune
from .capture import InputStats, StopForward
from .models import LoadedModel
from .scores import nm_keep_mask, score_matrix

# SparseGPT's column-block width and Hessian dampening (fraction of the mean diagonal), as in its
# paper and code; the llm-compressor export reads them from here.
SEQUENTIAL = ("wanda", "sparsegpt", "alps")  # pruners whose statistics flow through the pruned blocks
SPARSEGPT_BLOCK_SIZE = 128
SPARSEGPT_DAMPING = 0.01


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


def wanda_prune_rows(weight: torch.Tensor, sq: torch.Tensor, ratio: float, nm) -> None:
    scores = score_matrix(weight, sq.sqrt(), "wanda")
    if nm:
        weight.mul_(nm_keep_mask(scores, *nm))
        return
    count = round(ratio * weight.shape[1])
    if count:
        weight.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :count], 0.0)


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, ratio: float, nm,
               blocksize: int = SPARSEGPT_BLOCK_SIZE, damp: float = SPARSEGPT_DAMPING) -> None:
    """SparseGPT (Frantar & Alistarh 2023): OBS pruning column block by column block with updates."""
    W = weight.detach().float().clone()
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], device=H.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    rows, cols = W.shape
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if nm is None:
            # Exactly round(ratio * size) weights of this column block, by the OBS saliency w^2/d^2.
            saliency = (W1 ** 2 / d[None, :] ** 2).flatten()
            count = round(ratio * saliency.numel())
            if count:
                mask1.view(-1)[torch.topk(saliency, count, largest=False).indices] = True
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                saliency = W1[:, i:i + m] ** 2 / d[None, i:i + m] ** 2
                drop = torch.topk(saliency, m - n, dim=1, largest=False).indices
                mask1.scatter_(1, i + drop, True)
            w = W1[:, i]
            q = w.clone()
            q[mask1[:, i]] = 0.0
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    weight.copy_(W.to(weight.dtype))


@torch.no_grad()
def sequential_prune(loaded: LoadedModel, windows: torch.Tensor, ratios: Sequence[float],
                     method: str = "wanda", nm: tuple[int, int] | None = None, batch_size: int = 1) -> None:
    """Prune every block in order at its ratio (ignored for N:M) with `method` in SEQUENTIAL."""
    if method not in SEQUENTIAL:
        raise ValueError(f"sequential pruning supports {', '.join(SEQUENTIAL)}, not {method!r}")
    modules, batches = _capture_block_calls(loaded, windows, batch_size)
    hidden = [batch["hidden"] for batch in batches]
    for block, module in tqdm(list(zip(loaded.blocks, modules)), desc=f"{method} (sequential)", leave=False):
        stats = {name: InputStats(method in ("sparsegpt", "alps")) for name in block.linears}
        handles = [layer.register_forward_hook(stats[name]) for name, layer in block.linears.items()]
        for h, batch in zip(hidden, batches):
            _run_block(module, h, batch[block.index])
        for handle in handles:
            handle.remove()
        ratio = float(ratios[block.index])
        for name, layer in block.linears.items():
            if method == "wanda":
                wanda_prune_rows(layer.weight, stats[name].sq, ratio, nm)
            elif method == "sparsegpt":
                sparsegpt_prune(layer.weight, stats[name].hessian, ratio, nm)
            else:
                layer.weight.copy_(alps_prune(layer.weight, stats[name].hessian, ratio, nm))
        hidden = [_run_block(module, h, batch[block.index]) for h, batch in zip(hidden, batches)]
