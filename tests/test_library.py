"""The function library: named, validated function files with their provenance."""
import json
import math

import pytest
import torch

from dsa.core.errors import UserError
from dsa.functions import library
from dsa.functions.files import DSA_PUBLISHED, FunctionError, importance_expr
from dsa.functions.replay import function_ratios, load_function


def test_every_library_function_loads_by_name_with_its_provenance():
    assert {"tanh-ramp-60", "tanh-ramp-70", "tanh2-ramp-60", "tanh2-ramp-70", "tanh-ramp-70-all3",
            "dsa-published"} <= set(library.names())
    for name in library.names():
        document = load_function(name)
        meta = document["meta"]
        assert document["note"] and (meta["command"].startswith("python search.py") or "source" in meta)
        assert 0 < meta["sparsity"] < 1 and len(meta["trained_on"]) >= 1
        assert all(model not in meta["trained_on"] for model in meta["held_out"])
    assert str(importance_expr(load_function("tanh2-ramp-70"))) == "tanh(mean(tanh(d)))"


def test_shipped_dsa_published_is_the_baselines_function():
    """The library file and --allocation dsa-published (DSA_PUBLISHED, checked against DSA's code
    in test_dsa_fidelity.py) are one function: the same stages and lambda."""
    stages = ("importance", "transform", "post", "map")
    assert {k: load_function("dsa-published")[k] for k in stages} == {k: DSA_PUBLISHED[k] for k in stages}
    meta = load_function("dsa-published")["meta"]
    assert set(meta["held_out"]) == {"smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"} and meta["trained_on"] == ["llama-1-7b"]


def test_a_depth_ramp_gives_the_ratios_computed_by_hand():
    """mean(tanh(d)) under DSA's map at lambda 0.12 on 30 equal blocks: S + 2 lambda (m - mean m),
    m = tanh(d) / tanh(1) (min-max of a rising function with tanh(0) = 0)."""
    n, sparsity = 30, 0.7
    ratios, values = function_ratios(load_function("tanh-ramp-70"), None, n, torch.ones(n, dtype=torch.float64),
                                     sparsity)
    m = [math.tanh(i / (n - 1)) / math.tanh(1.0) for i in range(n)]
    expected = [sparsity + 2 * 0.12 * (x - sum(m) / n) for x in m]
    assert ratios == pytest.approx(expected, abs=1e-9)
    assert sum(ratios) / n == pytest.approx(sparsity, abs=1e-12)
    assert values == pytest.approx([math.tanh(i / (n - 1)) for i in range(n)], abs=1e-9)


def test_a_note_is_free_text_within_a_limit(tmp_path):
    document = load_function("tanh-ramp-70")
    path = tmp_path / "f.json"
    path.write_text(json.dumps({**document, "note": "found on my model"}))
    assert load_function(path)["note"] == "found on my model"
    path.write_text(json.dumps({**document, "note": 3}))
    with pytest.raises(UserError, match="note must be a text"):
        load_function(path)
    with pytest.raises(UserError, match="missing file"):
        load_function("no-such-function")


def test_any_lambda_of_the_maps_range_replays_off_the_search_grid():
    """mean(d) under DSA's map at lambda 0.1234 (not on the grid) is ATP's ramp at that lambda:
    S + 2 lambda (d - 1/2) on 30 equal blocks, d = i / 29."""
    n, lam = 30, 0.1234
    ramp = {**load_function("tanh-ramp-70"), "importance": {"operand": "depth", "pre": [], "reduction": "mean"},
            "transform": [], "map": {"kind": "dsa", "lambda": lam}}
    ratios, _ = function_ratios(ramp, None, n, torch.ones(n, dtype=torch.float64), 0.7)
    assert ratios == pytest.approx([0.7 + 2 * lam * (i / (n - 1) - 0.5) for i in range(n)], abs=1e-12)
    for bad, reason in ((0.5001, "outside"), (0.1234567, "6 significant digits")):
        with pytest.raises(FunctionError, match=reason):
            function_ratios({**ramp, "map": {"kind": "dsa", "lambda": bad}}, None, n, torch.ones(n), 0.7)
