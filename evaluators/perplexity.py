"""Perplexity with exact token accounting: every window predicts its last seqlen-1 tokens."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch_size: int = 1, progress: str | None = None) -> torch.Tensor:
    """Summed next-token negative log-likelihood of each window (float64, one per window)."""
    device = next(model.parameters()).device
    sums = []
    batches = range(0, len(windows), batch_size)
    for start in tqdm(batches, desc=progress, disable=progress is None, leave=False):
        ids = windows[start:start + batch_size].to(device)
        logits = model(ids, use_cache=False).logits[:, :-1]
        nll = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        sums.append(nll.view(len(ids), -1).sum(dim=1).double().cpu())
    return torch.cat(sums)


def perplexity(model, windows: torch.Tensor, batch_size: int = 1, progress: str | None = None) -> float:
    nll = window_nll(model, windows, batch_size, progress)
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    return math.exp(nll.sum().item() / tokens)
