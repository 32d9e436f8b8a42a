"""Allocation inside the block: per-matrix ratios reach every pruner unchanged, roles map on all
three built-in families, and ratios equal within each block prune exactly as block ratios do."""
import pytest
import torch

from dsa.allocation.matrices import ROLES, flatten, matrix_table, parameter_sparsity, per_matrix, role_of
from dsa.core.errors import UserError
from evaluators.architecture import model_layout
from evaluators.pruners import zero_fraction


def _weights(calibrated):
    return {(b.index, n): layer.weight.detach().clone() for b in calibrated.loaded.blocks for n, layer in b.linears.items()}


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"])
def test_roles_map_on_every_built_in_family(model):
    """Every block of LLaMA (SmolLM2), Gemma-3 and Qwen2 has the seven roles, once each."""
    layout = model_layout(model)
    table = matrix_table(layout.blocks)
    for block in layout.blocks:
        assert sorted(role for index, _, role, _ in table if index == block.index) == sorted(ROLES)
    assert sum(count for *_, count in table) == int(layout.sizes.sum())


def test_a_family_whose_names_do_not_map_is_refused():
    with pytest.raises(UserError, match="no matrix role for 'mlp.fc1'"):
        role_of("mlp.fc1")


@pytest.mark.parametrize("pruner, form", [("wanda", "sequential"), ("wanda", "cached"), ("magnitude", "sequential"),
                                          ("sparsegpt", "sequential")])
def test_ratios_equal_within_each_block_prune_as_block_ratios(session, pruner, form):
    """The same zeros and the same weights, bit for bit, whichever pruner."""
    blocks = session.calibrated.loaded.blocks
    ratios = [0.5 + 0.3 * i / (len(blocks) - 1) for i in range(len(blocks))]
    session.prune(ratios, pruner, wanda_form=form)
    by_block = _weights(session.calibrated)
    session.prune(per_matrix(flatten(ratios, blocks), blocks), pruner, wanda_form=form)
    by_matrix = _weights(session.calibrated)
    assert all(torch.equal(by_block[key], by_matrix[key]) for key in by_block)


def test_per_matrix_ratios_reach_the_pruner_unchanged(session):
    """Sequential Wanda prunes round(r * in) weights of every row of each matrix at its own r;
    the budget is over parameters, to the rounding of each matrix's count."""
    blocks = session.calibrated.loaded.blocks
    table = matrix_table(blocks)
    role_ratio = {"q": 0.8, "k": 0.85, "v": 0.4, "o": 0.6, "gate": 0.7, "up": 0.72, "down": 0.55}
    ratios = per_matrix([role_ratio[role] for _, _, role, _ in table], blocks)
    achieved = session.prune(ratios, "wanda")
    zeros, expected = 0, 0
    for block in blocks:
        for name, layer in block.linears.items():
            per_row = round(ratios[block.index][name] * layer.in_features)
            assert ((layer.weight == 0).sum(dim=1) >= per_row).all()
            zeros += int((layer.weight == 0).sum())
            expected += per_row * layer.out_features
    assert zeros == pytest.approx(expected, abs=10)  # weights already zero in the dense model
    assert achieved == pytest.approx(parameter_sparsity(ratios, blocks), abs=2e-4)
    assert achieved == zero_fraction(session.calibrated.loaded)
    session.restore()


def test_per_matrix_ratios_refused_with_n_m_and_when_names_are_wrong(session):
    blocks = session.calibrated.loaded.blocks
    ratios = per_matrix([0.5] * len(matrix_table(blocks)), blocks)
    with pytest.raises(UserError, match="per-matrix ratios do not apply"):
        session.prune(ratios, "wanda", nm=(2, 4))
    ratios[3].pop("mlp.down_proj")
    with pytest.raises(UserError, match="no ratio for mlp.down_proj"):
        session.prune(ratios, "wanda")
    session.restore()


def test_owl_per_matrix_equals_a_hand_computation(calibrated):
    """Each matrix's outlier fraction through OWL's map over all matrices; the budget holds over
    parameters and the ratios span S +- lambda."""
    from dsa.allocation.matrices import matrix_sizes, owl_matrix_ratios

    blocks = calibrated.loaded.blocks
    scores = [calibrated.block_scores(b.index) for b in blocks]
    ratios, metric = owl_matrix_ratios(scores, blocks, 0.7, m=5.0, lam=0.08)
    by_hand = torch.tensor([float((s > 5.0 * s.double().mean()).double().mean()) for mats in scores for s in mats],
                           dtype=torch.float64)
    assert torch.allclose(metric, by_hand, rtol=0, atol=1e-12)
    sizes = matrix_sizes(blocks)
    x = (by_hand - by_hand.min()) / (by_hand.max() - by_hand.min()) * 0.16
    expected = 1 - (x - (x * sizes).sum() / sizes.sum() + 0.3)
    assert flatten(ratios, blocks) == pytest.approx(expected.tolist(), abs=1e-12)
    assert parameter_sparsity(ratios, blocks) == pytest.approx(0.7, abs=1e-12)
    assert max(flatten(ratios, blocks)) - min(flatten(ratios, blocks)) == pytest.approx(0.16, abs=1e-12)
