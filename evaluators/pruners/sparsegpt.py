"""SparseGPT (Frantar & Alistarh 2023), used sequentially: OBS pruning with weight updates per layer.

Its statistics are the layer's Hessian X^T X over the calibration tokens, from inputs that the
already pruned earlier blocks produce (the sequential driver collects them).
"""
from __future__ import annotations

import torch

from ..capture import InputStats
from .base import NM, Pruner

# SparseGPT's column-block width and Hessian dampening (fraction of the mean diagonal), as in its
# paper and code; the llm-compressor export reads them from here.
SPARSEGPT_BLOCK_SIZE = 128
SPARSEGPT_DAMPING = 0.01


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, ratio: float, nm: NM,
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


def prune_layer(weight: torch.Tensor, stats: InputStats, ratio: float, nm: NM) -> None:
    sparsegpt_prune(weight, stats.hessian, ratio, nm)


SPARSEGPT = Pruner("sparsegpt", prune_layer=prune_layer, needs_hessian=True)
