"""The pruning pipeline on the real SmolLM2-135M: exact counts, N:M, restore, caches, perplexity."""
import math

import pytest
import torch

from dsa.core.errors import UserError
from evaluators.calibration import _measure_norms, input_norms, layer_key, row_orders
from evaluators.perplexity import perplexity
from evaluators.pruners import PRUNERS, REGISTRY, pruner_named, zero_fraction
from evaluators.scores import score_matrix


def test_exact_per_row_counts_and_budget(dense_bench):
    bench = dense_bench
    ratios = torch.linspace(0.45, 0.75, len(bench.blocks)).tolist()
    bench.pruner.prune(ratios)
    for block in bench.blocks:
        for name, layer in block.linears.items():
            key = layer_key(block.index, name)
            count = round(ratios[block.index] * layer.in_features)
            pruned = bench.pruner.orders[key][:, :count].long()
            assert (layer.weight.gather(1, pruned) == 0).all(), key
            kept = torch.ones_like(layer.weight, dtype=torch.bool).scatter_(1, pruned, False)
            assert torch.equal(layer.weight[kept], bench.pruner.dense[key][kept]), key
    target = float((bench.sizes * torch.tensor(ratios, dtype=torch.float64)).sum() / bench.sizes.sum())
    assert abs(zero_fraction(bench.loaded) - target) < 1e-3


def test_restore_is_bit_exact(dense_bench):
    bench = dense_bench
    before = {k: l.weight.detach().clone() for k, l in bench.pruner.layers.items()}
    bench.pruner.prune([0.7] * len(bench.blocks))
    assert zero_fraction(bench.loaded) > 0.69
    bench.pruner.restore()
    for key, layer in bench.pruner.layers.items():
        assert torch.equal(layer.weight, before[key]), key


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_n_m_masks_valid(dense_bench, n, m):
    bench = dense_bench
    bench.pruner.prune_n_m(n, m)
    for key, layer in bench.pruner.layers.items():
        groups = (layer.weight != 0).view(layer.out_features, -1, m).sum(dim=-1)
        assert (groups <= n).all(), key
    assert abs(zero_fraction(bench.loaded) - (1 - n / m)) < 1e-3


def test_cached_scores_equal_fresh(bench):
    fresh = _measure_norms(bench.loaded, bench.calib, bench.config.batch_size)
    cached = input_norms(bench.loaded, bench.calib, bench.config.calib_text)
    assert fresh.keys() == cached.keys()
    for key in fresh:
        assert torch.allclose(fresh[key], cached[key], rtol=1e-5), key
    orders = row_orders(bench.loaded, bench.norms, "wanda")  # loaded from the cache file
    for key in list(orders)[:14]:
        block, name = key.split(".", 1)
        scores = score_matrix(bench.pruner.dense[key], bench.norms[key], "wanda")
        assert torch.equal(orders[key].long(), torch.argsort(scores, dim=1, stable=True)), key


def test_perplexity_matches_model_loss(bench):
    window = bench.windows("wiki/test", 1)
    with torch.no_grad():
        loss = bench.loaded.model(window, labels=window).loss.item()
    assert math.isclose(perplexity(bench.loaded.model, window), math.exp(loss), rel_tol=1e-4)


def test_perplexity_grows_with_sparsity(dense_bench):
    bench = dense_bench
    dense = bench.perplexity("wiki/test", 4)
    bench.pruner.prune([0.5] * len(bench.blocks))
    half = bench.perplexity("wiki/test", 4)
    bench.pruner.prune([0.7] * len(bench.blocks))
    seventy = bench.perplexity("wiki/test", 4)
    assert 10 < dense < 40, dense
    assert dense < half < seventy, (dense, half, seventy)
    assert half < 4 * dense and seventy > 5 * dense


def test_sequential_wanda_and_sparsegpt(session):
    bench = session.bench
    dense = bench.perplexity("wiki/validation", 2)
    results = {}
    for pruner in ("wanda", "sparsegpt"):
        achieved = session.prune([0.5] * len(bench.blocks), pruner, None, "sequential")
        assert abs(achieved - 0.5) < 1e-3, pruner
        results[pruner] = bench.perplexity("wiki/validation", 2)
    # Few calibration tokens (1024 < 1536 inputs of down_proj) handicap SparseGPT's Hessian here.
    assert dense < results["wanda"] < 3.5 * dense and dense < results["sparsegpt"] < 6 * dense, (dense, results)
    achieved = session.prune([0.5] * len(bench.blocks), "sparsegpt", (2, 4), "sequential")
    assert abs(achieved - 0.5) < 1e-3


def test_incremental_prune_equals_fresh(dense_bench):
    bench = dense_bench
    n = len(bench.blocks)
    target = torch.linspace(0.6, 0.8, n).tolist()
    bench.pruner.prune(torch.linspace(0.8, 0.4, n).tolist())  # then move to the target both ways
    bench.pruner.prune(target)
    incremental = {k: l.weight.detach().clone() for k, l in bench.pruner.layers.items()}
    bench.pruner.restore()
    bench.pruner.prune(target)
    for key, layer in bench.pruner.layers.items():
        assert torch.equal(layer.weight, incremental[key]), key


def test_magnitude_prunes_per_matrix_like_the_reference(session):
    """`magnitude` drops exactly round(r * rows * cols) of each matrix's smallest |W| (one threshold
    per matrix, not per row); `magnitude-row` stays available and prunes round(r * cols) per row."""
    bench = session.bench
    ratios = [0.3 + 0.4 * i / (len(bench.blocks) - 1) for i in range(len(bench.blocks))]
    achieved = session.prune(ratios, "magnitude")
    for block in bench.blocks:
        for name, layer in block.linears.items():
            dense = bench.pruner.dense[layer_key(block.index, name)]
            zeros = layer.weight == 0
            count = round(ratios[block.index] * dense.numel())
            assert int(zeros.sum()) == count, (block.index, name)
            kept, dropped = dense[~zeros].abs(), dense[zeros].abs()
            assert float(dropped.max()) <= float(kept.min())  # one threshold for the whole matrix
    per_row_counts = {int(c) for c in (bench.blocks[0].linears["mlp.up_proj"].weight == 0).sum(dim=1)}
    assert len(per_row_counts) > 1  # rows lose different numbers of weights
    assert abs(achieved - sum(r * s for r, s in zip(ratios, bench.sizes.tolist())) / float(bench.sizes.sum())) < 1e-4


def test_registry_dispatch_by_name(session):
    """Every registered pruner is a per-layer rule for the sequential driver or a model-wide one;
    Wanda's cached form through the session is the search's cached prune, weight for weight."""
    assert PRUNERS == ("wanda", "sparsegpt", "alps", "magnitude", "magnitude-row")
    assert all(p.sequential != (p.prune_model is not None) for p in REGISTRY.values())
    assert [name for name, p in REGISTRY.items() if p.needs_hessian] == ["sparsegpt", "alps"]
    assert pruner_named("wanda").sequential and not pruner_named("wanda", "cached").sequential
    bench = session.bench
    ratios = torch.linspace(0.4, 0.7, len(bench.blocks)).tolist()
    achieved = session.prune(ratios, "wanda", wanda_form="cached")
    through_session = {k: l.weight.detach().clone() for k, l in bench.pruner.layers.items()}
    bench.pruner.restore()
    bench.pruner.prune(ratios)
    assert all(torch.equal(l.weight, through_session[k]) for k, l in bench.pruner.layers.items())
    target = float((bench.sizes * torch.tensor(ratios, dtype=torch.float64)).sum() / bench.sizes.sum())
    assert abs(achieved - target) < 1e-3
    for name, form, message in (("obs", "sequential", "unknown pruner 'obs'"), ("wanda", "fast", "unknown wanda form"),
                                ("magnitude-row", "sequential", "needs --metric magnitude")):
        with pytest.raises(UserError, match=message):
            session.prune(ratios, name, wanda_form=form)


def test_damaged_cache_entries_are_detected_and_recomputed(bench, tmp_path, monkeypatch, capsys):
    """Bytes overwritten inside a cached calibration or score-order file: detected by the entry's
    checksum, recomputed (with a warning), and the numbers are those of a fresh computation."""
    monkeypatch.setenv("DSA_CACHE", str(tmp_path))
    norms = input_norms(bench.loaded, bench.calib, "c4/train", 4)
    orders = row_orders(bench.loaded, norms, "wanda")
    for folder in ("calibration", "orders"):
        path = next((tmp_path / folder).glob("*.safetensors"))
        data = bytearray(path.read_bytes())
        data[-64:-60] = b"\x7f\x7f\x7f\x7f"  # inside the tensor bytes: the header still parses
        path.write_bytes(bytes(data))
    again = input_norms(bench.loaded, bench.calib, "c4/train", 4)
    orders_again = row_orders(bench.loaded, again, "wanda")
    err = capsys.readouterr().err
    assert "calibration cache" in err and "score-order cache" in err and "does not match its checksum" in err
    assert all(torch.equal(norms[k], again[k]) for k in norms)
    assert all(torch.equal(orders[k].cpu(), orders_again[k].cpu()) for k in orders)
