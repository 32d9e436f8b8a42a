"""The Python API (dsa/api.py) on the real built-in model: README's example as written, and a
model the caller already holds (the shared fixture's transformers model) beside the product's paths."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dsa
from dsa.allocation.allocate import BaselineOptions, baseline_ratios
from dsa.core.errors import UserError
from dsa.search.runner import RunConfig

from conftest import TEST_CONFIG

ROOT = Path(__file__).resolve().parents[1]
WINDOWS = {"calib_windows": TEST_CONFIG.calib_windows, "seqlen": TEST_CONFIG.seqlen}


def readme_example() -> str:
    """The python block under README's "## Python API" heading, as a user copies it."""
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Python API\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    assert section, "README has no '## Python API' section"
    block = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert block, "README's Python API section has no python code block"
    return block.group(1)


def budget_mean(ratios, model) -> float:
    sizes = [sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear))
             for block in model.model.layers]
    return sum(r * s for r, s in zip(ratios, sizes)) / sum(sizes)


def test_readme_example_runs_as_written():
    namespace = {}
    exec(compile(readme_example(), "README.md (Python API)", "exec"), namespace)
    model, ratios, achieved, ppl = (namespace[k] for k in ("model", "ratios", "achieved", "ppl"))
    assert len(ratios) == 30 and ratios[0] < 0.7 < ratios[-1]  # the concave depth ramp
    assert abs(budget_mean(ratios, model) - 0.7) < 1e-9
    # Sequential Wanda drops round(r x inputs) weights of every row: the zeros are exactly that count.
    zeros = total = expected = 0
    for ratio, block in zip(ratios, model.model.layers):
        for layer in (m for m in block.modules() if isinstance(m, torch.nn.Linear)):
            zeros += int((layer.weight == 0).sum())
            total += layer.weight.numel()
            expected += round(ratio * layer.in_features) * layer.out_features
    assert zeros == expected and achieved == zeros / total
    assert abs(achieved - 0.7) < 1e-3
    assert 150 < ppl < 400  # 247 measured; the dense model is near 20 on these windows


def test_user_held_model_allocates_as_the_alias(dense_calibrated):
    model = dense_calibrated.loaded.model  # a transformers model already in memory
    assert dsa.allocate(model, "uniform", 0.6) == [0.6] * 30
    held = dsa.allocate(model, "tanh2-ramp-70", 0.7)  # depth alone: no tokenizer, no text
    assert held == dsa.allocate("smollm2-135m", dsa.load_function("tanh2-ramp-70"), 0.7)
    assert abs(budget_mean(held, model) - 0.7) < 1e-9 and held == sorted(held)
    step = 2 * 0.12 / 29
    assert dsa.allocate(model, "atp", 0.7, atp_lambda=0.12) == pytest.approx(
        baseline_ratios("atp", dense_calibrated, 0.7, BaselineOptions(atp_step=step))[0], abs=1e-15)


def test_score_based_allocation_reads_the_calibration(dense_calibrated):
    """OWL on the held model equals the product's OWL on the same calibration windows."""
    loaded = dense_calibrated.loaded
    owl = dsa.allocate(loaded.model, "owl", 0.7, calib="c4/train", tokenizer=loaded.tokenizer, **WINDOWS)
    assert owl == baseline_ratios("owl", dense_calibrated, 0.7)[0]
    assert abs(budget_mean(owl, loaded.model) - 0.7) < 1e-9 and max(owl) - min(owl) > 0.05


def test_prune_and_perplexity_on_a_held_model(dense_calibrated):
    """Magnitude in place on the user's model (the fixture puts the dense weights back after)."""
    loaded = dense_calibrated.loaded
    dense = dsa.perplexity(loaded.model, "wiki/test", windows=2, seqlen=256, tokenizer=loaded.tokenizer)
    assert dense == dense_calibrated.perplexity("wiki/test", 2) and 10 < dense < 40
    ratios = [0.3] * 15 + [0.5] * 15
    achieved = dsa.prune(loaded, ratios, "magnitude")
    zeros = expected = total = 0
    for ratio, block in zip(ratios, loaded.blocks):
        for layer in block.linears.values():
            zeros += int((layer.weight == 0).sum())
            expected += round(ratio * layer.weight.numel())
            total += layer.weight.numel()
    assert zeros == expected and achieved == zeros / total
    pruned = dsa.perplexity(loaded, "wiki/test", windows=2, seqlen=256)
    assert dense < pruned < 10 * dense


def test_matrix_granularity_allocates_and_prunes_per_matrix(dense_calibrated):
    """granularity="matrix": OWL per matrix, ATP's ramp equal within each block; magnitude then
    drops round(r x numel) weights of each matrix at its own ratio."""
    from dsa.allocation.matrices import flatten, parameter_sparsity

    loaded = dense_calibrated.loaded
    owl = dsa.allocate(loaded.model, "owl", 0.7, calib="c4/train", tokenizer=loaded.tokenizer, granularity="matrix",
                       **WINDOWS)
    assert len(owl) == 30 and set(owl[0]) == set(loaded.blocks[0].linears)
    assert parameter_sparsity(owl, loaded.blocks) == pytest.approx(0.7, abs=1e-12)
    assert len({round(r, 12) for r in flatten(owl, loaded.blocks)}) > 30  # matrices of one block differ
    atp = dsa.allocate(loaded.model, "atp", 0.7, atp_lambda=0.12, granularity="matrix")
    assert [set(entry.values()) for entry in atp] == [{r} for r in dsa.allocate(loaded.model, "atp", 0.7, atp_lambda=0.12)]
    achieved = dsa.prune(loaded, owl, "magnitude")
    for block in loaded.blocks:
        for name, layer in block.linears.items():
            assert int((layer.weight == 0).sum()) == round(owl[block.index][name] * layer.weight.numel())
    assert achieved == pytest.approx(0.7, abs=1e-5)
    with pytest.raises(UserError, match="at matrix granularity the allocation is a function or one of uniform, owl, atp"):
        dsa.allocate(loaded.model, "alphapruning", 0.7, granularity="matrix")
    # A library function run on each matrix: a function of depth gives every matrix its block's ratio.
    ramp = dsa.allocate(loaded.model, "tanh-ramp-70", 0.7, granularity="matrix")
    for entry, ratio in zip(ramp, dsa.allocate(loaded.model, "tanh-ramp-70", 0.7)):
        assert list(entry.values()) == pytest.approx([ratio] * 7, abs=1e-12)


def test_bad_input_is_one_line(dense_calibrated):
    model = dense_calibrated.loaded.model
    zeros = sum(int((p == 0).sum()) for p in model.parameters())  # the dense model holds a few exact zeros
    with pytest.raises(UserError, match="unknown allocation 'owll'"):
        dsa.allocate(model, "owll", 0.7)
    with pytest.raises(UserError, match="outside"):
        dsa.allocate(model, "uniform", 1.2)
    with pytest.raises(UserError, match="load it first"):
        dsa.prune("smollm2-135m", [0.5] * 30)
    with pytest.raises(UserError, match="got 3 ratios for 30 blocks"):
        dsa.prune(model, [0.5] * 3, "magnitude")
    with pytest.raises(UserError, match="unknown pruner"):
        dsa.prune(model, [0.5] * 30, "magnitude-row")
    assert sum(int((p == 0).sum()) for p in model.parameters()) == zeros  # nothing was pruned


def test_search_settings_merge_and_are_checked(tmp_path):
    config = dsa.run_config("quick", {"search": {"generations": 1}}, model_config=TEST_CONFIG, name="api")
    assert (config.search.generations, config.search.population, config.name) == (1, 8, "api")
    assert config.model_config == TEST_CONFIG and isinstance(config, RunConfig)
    transfer = dsa.run_config("transfer", {"search": {"population": 4}})
    assert transfer.search.operands == ("depth",) and transfer.search.population == 4 and transfer.holdout
    with pytest.raises(UserError, match="unknown setting 'generation'"):
        dsa.run_config("quick", {"search": {"generation": 1}})
    # dsa.run_search reaches the runner: a bad text is refused before any model loads.
    with pytest.raises(UserError, match="wiki/nope"):
        dsa.run_search(fitness_text="wiki/nope", checkpoint_dir=str(tmp_path / "c"), results_dir=str(tmp_path / "r"))
    assert not (tmp_path / "c").exists()


def test_import_is_light():
    """`import dsa` loads nothing heavy; the API arrives on first use."""
    code = ("import sys, dsa, dsa.core.errors; heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'evaluators') or m in ('dsa.api', 'dsa.search')]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    assert callable(dsa.run_search) and "allocate" in dir(dsa)
