"""`apply.py export` on the real SmolLM2-135M: an allocation's ratios and llm-compressor recipe
without pruning. A function of depth alone is computed from the model's architecture (built on
the meta device, no weight read) and gives exactly the ratios `run` prunes with on the loaded
model; score functions and the other baselines read the calibrated model."""
import csv
import json

import pytest
import transformers
import yaml

import apply
from conftest import run_main
from dsa.allocation.allocate import BaselineOptions, baseline_ratios
from dsa.functions.replay import load_function
from dsa.outputs.export import recipe_sparsities
from dsa.protocol.session import SessionMeasurer
from dsa.protocol.tuning import function_allocation
from evaluators import calibrated as calibrated_module
from evaluators import models
from evaluators.session import EvaluationSession


@pytest.fixture
def no_weights(monkeypatch):
    """Every way a model's weights are read fails the test: the session, the loader, from_pretrained."""
    def refuse(*args, **kwargs):
        pytest.fail("export read the model's weights")
    monkeypatch.setattr(apply, "_session", refuse)
    for module in (models, calibrated_module):
        monkeypatch.setattr(module, "load_model", refuse)
    monkeypatch.setattr(models, "_load_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def exported(out) -> tuple[dict, list[dict], list[float]]:
    """ratios.json, ratios.csv's rows and the recipe's sparsities."""
    document = json.loads((out / "ratios.json").read_text())
    with open(out / "ratios.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    name, args = recipe_sparsities(yaml.safe_load((out / "recipe.yaml").read_text()))
    assert name == "WandaPruningModifier" and args["mask_structure"] == "0:0"
    return document, rows, args["sparsity"]


def test_depth_function_exports_runs_ratios_without_reading_weights(calibrated, capsys, no_weights, tmp_path):
    code, out, err = run_main(capsys, "export", "--function", "tanh2-ramp-70", "--model", "smollm2-135m",
                              "--sparsity", "0.7", "--out", str(tmp_path / "exp"))
    assert code == 0, err
    document, rows, recipe = exported(tmp_path / "exp")
    # what `run --function tanh2-ramp-70` prunes with, on the loaded and calibrated model
    expected, _ = function_allocation(SessionMeasurer(EvaluationSession(calibrated)), "smollm2-135m",
                                      load_function("tanh2-ramp-70"), 0.7)
    assert document["ratios"] == expected and recipe == expected  # the same floats, block by block
    sizes = [int(s) for s in calibrated.sizes]
    assert document["block_params"] == sizes and document["block_names"] == [b.name for b in calibrated.blocks]
    assert sum(r * s for r, s in zip(expected, sizes)) / sum(sizes) == pytest.approx(0.7, abs=1e-6)
    assert document["weighted_sparsity"] == pytest.approx(0.7, abs=1e-6)
    assert document["from"] == "architecture (no weights read)" and document["allocation"] == "tanh2-ramp-70"
    assert [float(row["ratio"]) for row in rows] == expected and [int(row["params"]) for row in rows] == sizes
    assert len(expected) == 30 and 0.55 < expected[0] < expected[-1] < 0.8  # a rising ramp
    assert all(a < b for a, b in zip(expected, expected[1:]))
    assert "parameter-weighted mean 0.700000" in out


def test_shape_baselines_from_the_architecture(calibrated, capsys, no_weights, tmp_path):
    """uniform, ER and ATP at a given step read only the blocks' shapes: no weights, the loaded model's ratios."""
    for method, extra in (("er", []), ("atp", ["--atp-step", "0.008"])):
        out = tmp_path / method
        code, _, err = run_main(capsys, "export", "--allocation", method, "--sparsity", "0.6", "--out", str(out), *extra)
        assert code == 0, err
        expected, _ = baseline_ratios(method, calibrated, 0.6, BaselineOptions(atp_step=0.008))
        assert exported(out)[0]["ratios"] == expected
    assert max(expected) - min(expected) == pytest.approx(29 * 0.008)  # ATP: an arithmetic ramp over 30 blocks
    er, _ = baseline_ratios("er", calibrated, 0.6)
    assert er == pytest.approx([0.6] * 30, abs=1e-12)  # SmolLM2's blocks all have the same shapes
    code, _, err = run_main(capsys, "export", "--allocation", "atp", "--out", str(tmp_path / "atp2"))
    assert code == 2 and "needs --atp-step" in err and not (tmp_path / "atp2").exists()


def test_score_allocations_read_the_calibrated_model(calibrated, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(apply, "_session", lambda args: EvaluationSession(calibrated))
    calibrated.pruner.restore()
    code, _, err = run_main(capsys, "export", "--allocation", "owl", "--out", str(tmp_path / "owl"))
    assert code == 0, err
    document = exported(tmp_path / "owl")[0]
    assert document["ratios"] == baseline_ratios("owl", calibrated, 0.7)[0]
    assert document["from"] == "calibrated model" and document["data"]["calib_windows"] == calibrated.config.calib_windows
    assert document["weighted_sparsity"] == pytest.approx(0.7, abs=1e-6)


def test_export_refuses_before_any_model(capsys, no_weights, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    for argv, message in (([], "one of the arguments --function --allocation is required"),
                          (["--allocation", "uniform", "--pruner", "magnitude"], "invalid choice: 'magnitude'"),
                          (["--function", "no-such.json"], "missing file: no-such.json"),
                          (["--allocation", "uniform", "--out", str(tmp_path / "taken")], "choose a new --out")):
        code, _, err = run_main(capsys, "export", *argv)
        assert code == 2 and message in err, (argv, err)
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_per_matrix_export_names_every_matrix(calibrated, capsys, monkeypatch, tmp_path):
    """--granularity matrix: ATP's ramp from the architecture alone (every matrix at its block's
    ratio) and OWL per matrix; ratios.csv has one row per matrix with its role, and the recipe
    targets each matrix by module name with its own sparsity."""
    from dsa.allocation.matrices import matrix_table, owl_matrix_ratios

    code, out, err = run_main(capsys, "export", "--allocation", "atp", "--atp-step", "0.008", "--granularity", "matrix",
                              "--out", str(tmp_path / "atp"))
    assert code == 0, err
    document, rows, recipe = exported(tmp_path / "atp")
    block_ratios, _ = baseline_ratios("atp", calibrated, 0.7, BaselineOptions(atp_step=0.008))
    table = matrix_table(calibrated.blocks)
    assert document["granularity"] == "matrix" and len(rows) == len(table) == 210
    assert [float(row["ratio"]) for row in rows] == [block_ratios[index] for index, *_ in table]
    assert [row["role"] for row in rows[:7]] == ["q", "k", "v", "o", "gate", "up", "down"]
    assert recipe == {row["name"]: float(row["ratio"]) for row in rows}
    assert "210 matrices in 30 blocks" in out and "parameter-weighted mean 0.700000" in out
    monkeypatch.setattr(apply, "_session", lambda args: EvaluationSession(calibrated))
    calibrated.pruner.restore()
    code, _, err = run_main(capsys, "export", "--allocation", "owl", "--granularity", "matrix", "--out", str(tmp_path / "owl"))
    assert code == 0, err
    document, rows, recipe = exported(tmp_path / "owl")
    expected, _ = owl_matrix_ratios([calibrated.block_scores(b.index) for b in calibrated.blocks], calibrated.blocks, 0.7)
    assert document["ratios"] == expected and document["weighted_sparsity"] == pytest.approx(0.7, abs=1e-12)
    code, _, err = run_main(capsys, "export", "--allocation", "alphapruning", "--granularity", "matrix",
                            "--out", str(tmp_path / "alpha"))
    assert code == 2 and "--granularity matrix exports a function or uniform, owl, atp" in err
