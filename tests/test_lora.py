"""LoRA recovery after pruning, on the real SmolLM2-135M: zeros kept, loss lowered, resumable.

The shared calibrated model is pruned, deep-copied and restored at once; only the copies are
fine-tuned, so no PEFT wrapper or changed weight reaches the other tests.
"""
import copy

import pytest
import torch

pytest.importorskip("peft")

from evaluators.lora import CHECKPOINT_NAME, finetune_lora  # noqa: E402
from evaluators.models import find_blocks  # noqa: E402
from evaluators.perplexity import window_nll  # noqa: E402


@pytest.fixture
def pruned_copy(dense_calibrated):
    """A copy of the model pruned at 70 % in every block (the shared model is dense again)."""
    dense_calibrated.pruner.prune([0.7] * len(dense_calibrated.blocks))
    model = copy.deepcopy(dense_calibrated.loaded.model)
    dense_calibrated.pruner.restore()
    return model


def _masks(model):
    return {f"{b.name}.{n}": layer.weight != 0 for b in find_blocks(model) for n, layer in b.linears.items()}


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_zeros_kept_and_loss_lowered(calibrated, pruned_copy):
    model = pruned_copy
    windows = calibrated.calib[:, :64]  # 4 windows, batch 2: steps 1-2 and 5-6 see the same windows
    masks = _masks(model)
    linears = {name: model.get_submodule(name) for name in masks}
    before = window_nll(model, windows, 4).sum().item()
    stats = finetune_lora(model, windows, 6, lr=1e-3, batch_size=2, progress=False)

    assert stats["steps"] == 6 and len(stats["losses"]) == 6 and len(stats["seconds_per_step"]) == 6
    assert stats["modules"] == len(masks)  # every block linear layer (q/k/v/o/gate/up/down)
    after_masks = _masks(model)
    assert after_masks.keys() == masks.keys()
    for name, mask in masks.items():
        assert torch.equal(after_masks[name], mask), name  # exactly the same zeros, no new ones
        assert model.get_submodule(name) is linears[name]  # plain nn.Linear back, same object
    assert type(linears[next(iter(linears))]) is torch.nn.Linear
    assert not hasattr(model, "peft_config")
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training

    losses = stats["losses"]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.2, losses
    # The merged, re-masked (sparse) model is better on the windows it was trained on.
    after = window_nll(model, windows, 4).sum().item()
    assert after < before * 0.95, (before, after)


def test_interrupted_then_resumed_equals_uninterrupted(calibrated, pruned_copy, tmp_path):
    windows = calibrated.calib[:2, :32]
    kwargs = dict(lr=1e-3, batch_size=1, target=["q_proj", "v_proj"], seed=3, progress=False)
    start = _weights(pruned_copy)

    straight = copy.deepcopy(pruned_copy)
    reference = finetune_lora(straight, windows, 4, **kwargs)

    class Stop(Exception):
        pass

    def stop_at_3(step, loss):
        if step == 3:
            raise Stop

    model = pruned_copy
    with pytest.raises(Stop):
        finetune_lora(model, windows, 4, checkpoint_dir=tmp_path, checkpoint_every=2, on_step=stop_at_3, **kwargs)
    # Interrupted: adapters taken off, weights as they were; the step-2 checkpoint is on disk.
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]

    resumed = finetune_lora(model, windows, 4, checkpoint_dir=tmp_path, checkpoint_every=2, **kwargs)
    assert resumed["resumed_from"] == 2
    assert resumed["losses"] == reference["losses"]
    final = _weights(model)
    expected = _weights(straight)
    assert final.keys() == expected.keys()
    for key in final:
        assert torch.equal(final[key], expected[key]), key
    assert any(not torch.equal(final[k], start[k]) for k in final)  # it did train

    # Finished: from the same pruned start it resumes at the end (no step) to the same weights;
    # other settings, another starting model or fewer steps are refused.
    with pytest.raises(ValueError, match="model differ"):
        finetune_lora(model, windows, 4, checkpoint_dir=tmp_path, **kwargs)
    model.load_state_dict(start)
    with pytest.raises(ValueError, match="lr differ"):
        finetune_lora(model, windows, 4, checkpoint_dir=tmp_path, **{**kwargs, "lr": 2e-3})
    with pytest.raises(ValueError, match="beyond"):
        finetune_lora(model, windows, 3, checkpoint_dir=tmp_path, **kwargs)
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    done = finetune_lora(model, windows, 4, checkpoint_dir=tmp_path, **kwargs)
    assert done["resumed_from"] == 4 and done["losses"] == reference["losses"]
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]
