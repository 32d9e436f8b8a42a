"""ALPS on a real SmolLM2-135M layer with real calibration inputs, against SparseGPT and Wanda.

The layer is block 3's self_attn.k_proj (192 x 576): the smallest matrix of the block, so ALPS
runs with its faithful default constants in about a second on one core. Its inputs are the
1024 calibration tokens of the shared calibrated model (4 windows x 256), taken from the dense model.
"""
import pytest
import torch

from evaluators.capture import StopForward
from evaluators.pruners.alps import alps_prune
from evaluators.pruners.sparsegpt import sparsegpt_prune

BLOCK, LAYER = 3, "self_attn.k_proj"


@pytest.fixture(scope="module")
def layer_data(calibrated):
    """(dense weight, calibration inputs X) of the layer; the forward stops right after it."""
    if "pruner" in calibrated.__dict__:  # another test may have left the shared model pruned
        calibrated.pruner.restore()
    layer = calibrated.blocks[BLOCK].linears[LAYER]
    seen = []

    def hook(module, inputs, output):
        seen.append(inputs[0].detach().flatten(0, -2).float())
        raise StopForward

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for start in range(0, len(calibrated.calib), calibrated.config.batch_size):
                try:
                    calibrated.loaded.model(calibrated.calib[start:start + calibrated.config.batch_size].to(calibrated.loaded.device),
                                       use_cache=False)
                except StopForward:
                    pass
    finally:
        handle.remove()
    return layer.weight.detach().float().clone(), torch.cat(seen)


def rel_error(X, W, pruned):
    return float((X @ (W - pruned).T).norm() / (X @ W.T).norm())


def wanda(W, X, ratio, nm=None):
    """Wanda: drop the lowest |W_ij| * ||X_j|| of each row (round(ratio * cols) of them, or per N:M group)."""
    scores = W.abs() * X.norm(dim=0)[None, :]
    if nm is not None:
        n, m = nm
        groups = scores.view(W.shape[0], -1, m)
        drop = groups.topk(m - n, dim=-1, largest=False).indices
        return W * torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False).view_as(W)
    drop = torch.argsort(scores, dim=1, stable=True)[:, :round(ratio * W.shape[1])]
    return W.scatter(1, drop, 0.0)


def sparsegpt(W, H, ratio, nm=None):
    out = W.clone()
    sparsegpt_prune(out, H, ratio, nm)  # works in place
    return out


def test_alps_beats_sparsegpt_and_wanda_at_70(layer_data):
    W, X = layer_data
    H = X.T @ X
    before = W.clone()
    pruned = alps_prune(W, H, 0.7)  # production defaults: fast enough on this layer
    assert torch.equal(W, before), "alps_prune must not modify its input"
    assert pruned.shape == W.shape and pruned.dtype == W.dtype
    # Exact layer-wide count (rows may differ: the support is a top-k over the whole layer).
    assert int((pruned == 0).sum()) == round(0.7 * W.numel())
    e_alps = rel_error(X, W, pruned)
    e_sgpt = rel_error(X, W, sparsegpt(W, H, 0.7))
    e_wanda = rel_error(X, W, wanda(W, X, 0.7))
    assert e_alps < e_sgpt < e_wanda, (e_alps, e_sgpt, e_wanda)


def test_alps_2_4(layer_data):
    W, X = layer_data
    H = X.T @ X
    pruned = alps_prune(W, H, 0.5, nm=(2, 4))
    groups = (pruned != 0).view(W.shape[0], -1, 4).sum(dim=-1)
    assert (groups <= 2).all()
    assert int((pruned == 0).sum()) == W.numel() // 2
    e_alps = rel_error(X, W, pruned)
    e_wanda = rel_error(X, W, wanda(W, X, 0.5, (2, 4)))
    e_sgpt = rel_error(X, W, sparsegpt(W, H, 0.5, (2, 4)))
    assert e_alps < e_sgpt < e_wanda, (e_alps, e_sgpt, e_wanda)


@pytest.mark.parametrize("ratio", [0.333, 0.5123, 1.0])
def test_alps_exact_count(layer_data, ratio):
    # Only the count is checked here, so a few ADMM iterations (not the default 300 cap) suffice.
    W, X = layer_data
    pruned = alps_prune(W, X.T @ X, ratio, max_iter=6, pcg_iters=2)
    assert int((pruned == 0).sum()) == round(ratio * W.numel())


def test_alps_ratio_zero_keeps_dense(layer_data):
    # The dense k_proj already holds a few exact zeros, so "no pruning" means "unchanged".
    W, X = layer_data
    assert torch.equal(alps_prune(W, X.T @ X, 0.0), W)
