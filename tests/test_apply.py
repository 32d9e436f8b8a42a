"""apply.py end to end on the real SmolLM2-135M: replay a function against uniform, save and reload
the pruned model, the llm-compressor recipe, zero-shot accuracy through lm-eval, 2:4, show, diff,
and hostile function files.

The model runs go through apply.main in-process on the session calibrated model (one model load for
the whole suite); the hostile files run apply.py as a subprocess, as a user would.
"""
import csv
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sympy
import torch
from sympy.core.function import AppliedUndef

import apply
from conftest import run_main
from dsa.allocation.allocate import BaselineOptions, baseline_ratios
from dsa.outputs.export import MODIFIERS, llmcompressor_recipe, recipe_sparsities, save_pruned
from dsa.functions.files import importance_expr, simplified_expr
from dsa.functions.replay import function_ratios, load_function
from evaluators.session import EvaluationSession
from evaluators import bitmask
from evaluators.models import find_blocks, load_model
from evaluators.perplexity import window_nll
from search_space import post, pre, reduction, transform

ROOT = Path(__file__).resolve().parents[1]
SPARSITY = 0.5

# OWL's outlier fraction of the Wanda scores, through sqrt and a wider OWL map: not a baseline.
FUNCTION = {"format": "dsa-function", "version": 1,
            "importance": {"operand": "wanda", "pre": [], "reduction": "outlier"},
            "transform": ["sqrt"], "post": "noop", "map": {"kind": "owl", "lambda": 0.1}}
# Cheap to compute (the weights themselves, no scores), for the runs that only need some function.
WEIGHT_STD = {"format": "dsa-function", "version": 1,
              "importance": {"operand": "weight", "pre": [], "reduction": "std"},
              "transform": [], "post": "noop", "map": {"kind": "alpha", "eps": 0.3}}

# Sentences a 135M model completes: the first choice is the right one (the label says so).
FACTS = [
    ("The capital of France is", ["Paris", "a small fish"], 0),
    ("Water freezes at a temperature of zero degrees", ["Celsius", "happiness"], 0),
    ("The largest planet in the Solar System is", ["the river", "Jupiter"], 1),
    ("Monday, Tuesday, Wednesday,", ["Thursday", "green"], 0),
    ("The cat sat on the", ["mat", "theorem"], 0),
    ("One, two, three, four,", ["five", "blue"], 0),
    ("The Pacific is the largest", ["ocean", "violin"], 0),
    ("Shakespeare wrote the play", ["Hamlet", "Microsoft"], 0),
]

TASK_YAML = """task: dsa_tiny_facts
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_function(path: Path, document) -> Path:
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def function(pre_ops=(), red="mean", tr=(), post_op="noop", operand="wanda", mapping=None) -> dict:
    return {"format": "dsa-function", "version": 1,
            "importance": {"operand": operand, "pre": list(pre_ops), "reduction": red},
            "transform": list(tr), "post": post_op, "map": mapping or {"kind": "owl", "lambda": 0.08}}


def zero_counts(model) -> dict[str, int]:
    return {f"{b.name}.{n}": int((layer.weight == 0).sum()) for b in find_blocks(model) for n, layer in b.linears.items()}


def choice_loglikelihoods(model, tokenizer, context: str, choices: list[str]) -> list[float]:
    """Summed log-probability of ' choice' after the context, tokenised as lm-eval does."""
    scores = []
    for choice in choices:
        context_ids = tokenizer(context).input_ids
        whole = tokenizer(context + " " + choice).input_ids
        n_context = len(context_ids)
        if whole[:n_context] != context_ids:  # lm-eval moves trailing spaces, never the words
            raise AssertionError("context tokens differ inside the whole")
        ids = torch.tensor([whole])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
        targets = ids[0, 1:]
        scores.append(float(logprobs[torch.arange(len(targets)), targets][n_context - 1:].sum()))
    return scores


# ---------------------------------------------------------------- one replay, many checks


@pytest.fixture(scope="module")
def applied(calibrated, tmp_path_factory):
    """apply.py run --function ... --save --export-llmcompressor --eval-zero-shot, on the shared calibrated.

    Wanda from the cached dense scores keeps this quick; the sequential (faithful) path runs in
    test_two_four_valid and tests/test_pruning.py.
    """
    tmp = tmp_path_factory.mktemp("apply")
    tasks = tmp / "tasks"
    tasks.mkdir()
    data = tasks / "facts.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "label": label}) + "\n" for q, c, label in FACTS))
    (tasks / "dsa_tiny_facts.yaml").write_text(TASK_YAML.format(data=data))
    fn_path = write_function(tmp / "best.json", FUNCTION)
    out = {"save": tmp / "pruned", "recipe": tmp / "recipe.yaml", "json": tmp / "report.json"}
    patch = pytest.MonkeyPatch()
    patch.setattr(apply, "_session", lambda args: EvaluationSession(calibrated))
    calibrated.pruner.restore()
    try:
        apply.main(["run", "--function", str(fn_path), "--sparsity", str(SPARSITY), "--wanda-form", "cached",
                    "--eval", "wiki/test", "--eval-windows", "2", "--json", str(out["json"]),
                    "--save", str(out["save"]), "--export-llmcompressor", str(out["recipe"]),
                    "--eval-zero-shot", "dsa_tiny_facts", "--tasks-dir", str(tasks)])
        # what the pruned model in memory is now, before any other test touches the calibrated
        out["zeros"] = zero_counts(calibrated.loaded.model)
        out["bitmask"] = save_pruned(calibrated.loaded, tmp / "bitmask", {"achieved_sparsity": SPARSITY}, "bitmask")
        out["own_choices"] = [choice_loglikelihoods(calibrated.loaded.model, calibrated.loaded.tokenizer, q, c)
                              for q, c, _ in FACTS]
    finally:
        patch.undo()
        calibrated.pruner.restore()
    out["report"] = json.loads(out["json"].read_text())
    return out


def test_function_against_uniform(applied, calibrated):
    report = applied["report"]
    ratios, uniform = report["ratios"], report["uniform"]["ratios"]
    assert len(ratios) == len(uniform) == len(calibrated.blocks) == 30
    assert max(ratios) - min(ratios) > 0.1  # the function does allocate
    assert all(r == pytest.approx(SPARSITY, abs=1e-12) for r in uniform)
    for achieved in (report["achieved_sparsity"], report["uniform"]["achieved_sparsity"]):
        assert abs(achieved - SPARSITY) < 2e-3, achieved
    dense, fn_ppl, uni_ppl = (report[k]["wiki/test"] for k in ("dense_ppl", "ppl", "uniform_ppl"))
    assert 10 < dense < 40 and dense < fn_ppl < 3 * dense and dense < uni_ppl < 3 * dense, (dense, fn_ppl, uni_ppl)
    assert fn_ppl != uni_ppl


def test_saved_model_reloads_identically(applied, calibrated):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = applied["save"]
    assert list(directory.glob("*.safetensors")) and not list(directory.glob("*.bin"))
    info = json.loads((directory / "dsa.json").read_text())
    report = applied["report"]
    assert info["function"] == FUNCTION and info["pruner"] == "wanda" and info["sparsity"] == SPARSITY
    assert info["ratios"] == report["ratios"] and info["achieved_sparsity"] == report["achieved_sparsity"]
    config = calibrated.config
    assert info["data"] == {"calib_text": config.calib_text, "calib_windows": config.calib_windows, "seqlen": config.seqlen}

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model.eval()
    assert zero_counts(model) == applied["zeros"]
    assert sum(applied["zeros"].values()) > 0.49 * sum(b.size for b in calibrated.blocks)
    windows = calibrated.windows("wiki/test", 2)
    text = calibrated.loaded.tokenizer.decode(windows[0])
    assert tokenizer(text).input_ids == calibrated.loaded.tokenizer(text).input_ids
    ppl = math.exp(window_nll(model, windows, 2).sum().item() / (windows.numel() - len(windows)))
    assert ppl == pytest.approx(report["ppl"]["wiki/test"], rel=1e-6)


def test_bitmask_layout_by_hand():
    weight = torch.tensor([[0.0, 1.5, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 4.0], [3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    fields = bitmask.compress(weight)
    assert fields["shape"].tolist() == [2, 9] and fields["compressed"].tolist() == [1.5, 2.0, 4.0, 3.0]
    assert fields["bitmask"].tolist() == [[0b00001010, 0b1], [0b1, 0]]  # bit j of byte b: column 8b + j
    assert fields["row_offsets"].tolist() == [0, 3]
    assert torch.equal(bitmask.decompress(fields), weight)


def test_bitmask_save_is_smaller_and_loads_back_identically(applied, calibrated):
    from safetensors.torch import load_file

    dense, packed = applied["save"] / "model.safetensors", applied["bitmask"] / "model.safetensors"
    stored = load_file(packed)
    linears = [f"{b.name}.{n}" for b in calibrated.blocks for n in b.linears]
    assert all(f"{name}.{key}" in stored for name in linears for key in bitmask.FIELDS)
    assert not any(f"{name}.weight" in stored for name in linears)
    config = json.loads((applied["bitmask"] / "config.json").read_text())["quantization_config"]
    assert config["sparsity_config"]["format"] == "sparse-bitmask" and config["quant_method"] == "compressed-tensors"
    # float32 at 50 %: half the block weights plus one bit each; embeddings stay dense
    assert 0.55 < packed.stat().st_size / dense.stat().st_size < 0.75
    loaded = load_model(str(applied["bitmask"]))
    reference = load_file(dense)
    state = loaded.model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in reference.items())
    windows = calibrated.windows("wiki/test", 2)
    ppl = math.exp(window_nll(loaded.model, windows, 2).sum().item() / (windows.numel() - len(windows)))
    assert ppl == pytest.approx(applied["report"]["ppl"]["wiki/test"], rel=1e-6)


def test_llmcompressor_recipe_carries_the_ratios(applied, calibrated):
    import yaml

    text = applied["recipe"].read_text()
    recipe = yaml.safe_load(text)
    name, args = recipe_sparsities(recipe)
    assert name == "WandaPruningModifier" and args["mask_structure"] == "0:0"
    assert args["sparsity"] == applied["report"]["ratios"]  # exact floats, one per block, in order
    pattern = args["targets"][0].removeprefix("re:")
    matched = [n for n, _ in calibrated.loaded.model.named_modules() if re.match(pattern, n)]
    assert matched == [b.name for b in calibrated.blocks]
    assert "re:.*lm_head" in args["ignore"]
    _validate_with_llmcompressor(applied["recipe"], "WandaPruningModifier", args["sparsity"], len(calibrated.blocks))


LLMC_CHECK = """
import json, sys
import llmcompressor
from llmcompressor.recipe import Recipe
(modifier,) = Recipe.create_instance(sys.argv[1]).modifiers
print(json.dumps({"name": type(modifier).__name__, "sparsity": modifier.sparsity, "targets": modifier.targets,
                  "nm": [modifier._prune_n, modifier._prune_m], "version": llmcompressor.__version__}))
"""


def _validate_with_llmcompressor(path: Path, modifier: str, sparsity: list[float], n_blocks: int) -> None:
    """llm-compressor's own recipe loader, in this interpreter or in DSA_LLMCOMPRESSOR_PYTHON
    (llmcompressor 0.14 pins transformers <= 5.17, so it often lives in a venv of its own)."""
    if importlib.util.find_spec("llmcompressor"):
        python = sys.executable
    elif os.environ.get("DSA_LLMCOMPRESSOR_PYTHON"):
        python = os.environ["DSA_LLMCOMPRESSOR_PYTHON"]
    else:
        return  # the schema checks above stand alone
    done = subprocess.run([python, "-c", LLMC_CHECK, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["name"] == modifier and loaded["sparsity"] == sparsity and len(sparsity) == n_blocks
    assert loaded["targets"] == [r"re:^model\.layers\.\d+$"]


def test_zero_shot_matches_own_loglikelihoods(applied):
    report = applied["report"]
    result, uniform = report["zero_shot"]["dsa_tiny_facts"], report["uniform_zero_shot"]["dsa_tiny_facts"]
    assert result["samples"] == uniform["samples"] == len(FACTS)
    own = applied["own_choices"]
    accuracy = sum(max(range(len(s)), key=s.__getitem__) == label for s, (_, _, label) in zip(own, FACTS)) / len(FACTS)
    assert result["acc"] == pytest.approx(accuracy, abs=1e-12)
    normed = [[v / len(c) for v, c in zip(s, choices)] for s, (_, choices, _) in zip(own, FACTS)]
    acc_norm = sum(max(range(len(s)), key=s.__getitem__) == label for s, (_, _, label) in zip(normed, FACTS)) / len(FACTS)
    assert result["acc_norm"] == pytest.approx(acc_norm, abs=1e-12)
    assert result["acc"] >= 0.75 and 0.0 <= uniform["acc"] <= 1.0


# ---------------------------------------------------------------- 2:4


def test_two_four_valid(calibrated, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(apply, "_session", lambda args: EvaluationSession(calibrated))
    fn_path = write_function(tmp_path / "f.json", WEIGHT_STD)
    calibrated.pruner.restore()
    try:  # sequential Wanda, the default: activations through the pruned blocks
        code, out, err = run_main(capsys, "--function", str(fn_path), "--structure", "2:4",
                                  "--eval", "wiki/test", "--eval-windows", "1", "--json", str(tmp_path / "r.json"),
                                  "--export-llmcompressor", str(tmp_path / "recipe.json"))
        assert code == 0, err
        for block in calibrated.blocks:
            for name, layer in block.linears.items():
                kept = (layer.weight != 0).view(layer.out_features, -1, 4).sum(dim=-1)
                assert (kept <= 2).all(), f"{block.name}.{name}"
                assert (kept == 2).float().mean() > 0.999, f"{block.name}.{name}"
    finally:
        calibrated.pruner.restore()
    report = json.loads((tmp_path / "r.json").read_text())
    assert abs(report["achieved_sparsity"] - 0.5) < 1e-3 and report["uniform_ppl"] is None
    assert "no uniform comparison" in err
    name, args = recipe_sparsities(json.loads((tmp_path / "recipe.json").read_text()))
    assert name == "WandaPruningModifier" and args["mask_structure"] == "2:4"
    assert args["sparsity"] == [0.5] * len(calibrated.blocks)
    _validate_with_llmcompressor(tmp_path / "recipe.json", "WandaPruningModifier", args["sparsity"], len(calibrated.blocks))


def test_sparsegpt_recipe_and_magnitude_refused(capsys, tmp_path):
    recipe = llmcompressor_recipe(["model.layers.0", "model.layers.1"], [0.4, 0.6], "sparsegpt")
    args = recipe["sparsity_stage"]["sparsity_modifiers"][MODIFIERS["sparsegpt"]]
    assert args["sparsity"] == [0.4, 0.6] and args["mask_structure"] == "0:0"
    assert args["block_size"] == 128 and args["dampening_frac"] == 0.01  # as evaluators/pruners/sequential.py
    path = tmp_path / "sparsegpt.yaml"
    code, _, err = run_main(capsys, "--pruner", "magnitude", "--export-llmcompressor", str(path))
    assert code == 2 and "wanda and sparsegpt" in err and len(err.strip().splitlines()) == 1
    from dsa.outputs.export import write_recipe
    write_recipe(path, recipe)
    _validate_with_llmcompressor(path, "SparseGPTModifier", [0.4, 0.6], 2)


# ---------------------------------------------------------------- show and diff


def _undefined_functions() -> dict:
    """Every undefined function a formula can hold (mean, var, zscore, rank, ...), by name."""
    x = sympy.Symbol("x")
    names = set()
    for registry in (pre.OPS, reduction.OPS, transform.OPS, post.OPS):
        for op in registry.values():
            names |= {f.func.__name__ for f in sympy.sympify(op.sym(x)).atoms(AppliedUndef)}
    return {name: sympy.Function(name) for name in names}


SHOWN = [
    FUNCTION,
    function(pre_ops=["minmax", "abslog"], red="rank", tr=["tanh"], post_op="tanh", operand="weight",
             mapping={"kind": "alpha", "eps": 0.3}),
    function(pre_ops=["square"], red="geomean", tr=["softplus", "sqrt"], post_op="softmax"),
    {**function(tr=["log"]), "importance": {"op": "div", "args": [
        {"operand": "wanda", "pre": ["zscore"], "reduction": "l2"},
        {"op": "sub", "args": [{"operand": "magnitude", "pre": [], "reduction": "entropy"},
                               {"operand": "weight", "pre": ["exp", "sigmoid"], "reduction": "alpha_peak"}]}]}},
]


@pytest.mark.parametrize("document", SHOWN, ids=["readme", "rank-alpha", "geomean-softmax", "tree"])
def test_show_prints_a_formula_sympy_parses_back(capsys, tmp_path, document):
    path = write_function(tmp_path / "f.json", document)
    code, out, err = run_main(capsys, "show", str(path))
    assert code == 0, err
    lines = out.splitlines()
    formula = next(line for line in lines if line.startswith("importance = ")).removeprefix("importance = ")
    parsed = sympy.parse_expr(formula, local_dict=_undefined_functions())
    expected = importance_expr(document)
    assert parsed == expected, (parsed, expected)
    assert any(line.startswith("LaTeX: ") for line in lines)
    simplified = next(line for line in lines if line.startswith("simplified")).split(" = ", 1)[1]
    assert str(simplified_expr(document)) == simplified
    assert json.loads(lines[0].removeprefix("stages: "))["map"] == document["map"]


EQUAL_PAIRS = [  # (a, b, how): the same formula written with different ops
    (function(red="std"), function(red="var", tr=["sqrt"]), "algebraically equal"),       # sqrt|var| = std
    (function(tr=["exp", "log"]), function(), "algebraically equal"),                     # log|exp(v)| = v
    (function(red="var", tr=["abs"]), function(red="var"), "algebraically equal"),        # var >= 0
    (function(pre_ops=["log"], tr=["exp"]), function(red="geomean"), "identical formula"),  # exp(mean log|x|)
    (function(tr=["sigmoid"]), function(post_op="sigmoid"), "identical formula"),
]
DIFFERENT_PAIRS = [
    (function(tr=["sin"]), function(tr=["cos"])),
    (function(tr=["tanh"]), function(tr=["sigmoid"])),
    (function(), function(mapping={"kind": "owl", "lambda": 0.1})),
]


@pytest.mark.parametrize("first,second,how", EQUAL_PAIRS)
def test_diff_recognises_equal_formulas(capsys, tmp_path, first, second, how):
    a, b = write_function(tmp_path / "a.json", first), write_function(tmp_path / "b.json", second)
    code, out, err = run_main(capsys, "diff", str(a), str(b))
    assert code == 0, out + err
    assert f"same formula: yes (different ops, {how}" in out


@pytest.mark.parametrize("first,second", DIFFERENT_PAIRS)
def test_diff_tells_different_formulas(capsys, tmp_path, first, second):
    a, b = write_function(tmp_path / "a.json", first), write_function(tmp_path / "b.json", second)
    code, out, _ = run_main(capsys, "diff", str(a), str(b))
    assert code == 1 and "same formula: no" in out


def test_diff_ratios_on_model(calibrated, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(apply, "_session", lambda args: EvaluationSession(calibrated))
    # exp(mean(log|W|)): float32 logs then a float64 mean, against geomean's float64 logs
    log_mean_exp = write_function(tmp_path / "lme.json", function(pre_ops=["log"], tr=["exp"], operand="weight"))
    geomean = write_function(tmp_path / "geomean.json", function(red="geomean", operand="weight"))
    code, out, err = run_main(capsys, "diff", str(log_mean_exp), str(geomean), "--model", "smollm2-135m")
    assert code == 0, out + err
    gap = float(re.search(r"largest difference (\S+) at", out).group(1))
    assert "same ratios on smollm2-135m at 0.7: yes" in out and gap <= 1e-6
    std = write_function(tmp_path / "std.json", function(red="std", operand="weight"))
    code, out, _ = run_main(capsys, "diff", str(std), str(geomean), "--model", "smollm2-135m")
    gap = float(re.search(r"largest difference (\S+) at", out).group(1))
    assert code == 1 and "same formula: no" in out and "same ratios on smollm2-135m at 0.7: no" in out and gap > 0.01


def test_show_on_model_tells_whether_a_function_reads_a_guard(calibrated, capsys, monkeypatch, tmp_path):
    """`show --model` moves the ops' guards and says whether the ratios move: the boundary rule
    log|tanh(d)| (block 0's value is the log's floor) does, a ramp of depth and a score statistic do not."""
    monkeypatch.setattr(apply, "_session", lambda args: EvaluationSession(calibrated))
    depth = {"operand": "depth", "pre": [], "reduction": "mean"}
    cases = {"boundary": ({**function(), "importance": depth, "transform": ["tanh"], "post": "log"}, True),
             "ramp": ({**function(), "importance": depth, "transform": ["tanh"], "post": "noop"}, False),
             "wanda": (function(), False)}
    for name, (document, reads) in cases.items():
        code, out, err = run_main(capsys, "show", str(write_function(tmp_path / f"{name}.json", document)),
                                  "--model", "smollm2-135m")
        assert code == 0, err
        line = next(line for line in out.splitlines() if line.startswith("guard check: "))
        shift = float(re.search(r"at most (\S+) \(tolerance 0.001\)", line).group(1))
        assert ("reads a guard" in line) == reads and (shift > 0.001) == reads, (name, line)
        if not reads:  # only depth's 1e-4 inset moves them: by about 1e-4 times the ratios' slope in depth
            assert shift <= 1e-5, (name, line)


# ---------------------------------------------------------------- hostile and malformed files

HOSTILE = {
    "unknown-op": (function(tr=["sqrt", "rm_rf"]), "unknown transform op 'rm_rf'"),
    "huge-nesting": ("[" * 30000 + "]" * 30000, "not valid JSON: maximum recursion depth"),  # 60 KB: under the size cap
    "nan-constant": (json.dumps(function()).replace("0.08", "NaN"), "map constant must be a finite number"),
    "python-in-string": (function(red="__import__('os').system('touch /tmp/dsa-pwned')"), "unknown reduction"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_files_refused_by_the_cli(tmp_path, case):
    document, reason = HOSTILE[case]
    path = write_function(tmp_path / "f.json", document)
    done = subprocess.run([sys.executable, str(ROOT / "apply.py"), "--function", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-1000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and reason in lines[0], lines
    assert len(lines[0]) < 200 and not Path("/tmp/dsa-pwned").exists()


MALFORMED = [
    (function(red=["var"]), "unknown reduction ['var']"),                 # unhashable where a name belongs
    (function(post_op={"op": "x"}), "unknown post op"),
    (function(mapping={"kind": "evil", "eps": 0.3}), "map must be"),
    (function(mapping={"kind": "owl", "lambda": 0.7}), "outside [0.0, 0.5]"),
    (function(mapping={"kind": "owl", "lambda": True}), "must be a number"),
    ({**function(), "version": True}, "unsupported version True"),
    ({**function(), "version": 2}, "unsupported version 2"),
    ({**function(), "format": "pickle"}, "'format' must be"),
    ({**function(), "code": "print(1)"}, "unknown fields ['code']"),
    ({**function(), "meta": "x"}, "meta must be an object"),
    ({**function(), "importance": {"op": "add", "args": [{"op": "add", "args": [
        {"op": "add", "args": [function()["importance"]] * 2}, function()["importance"]]}, function()["importance"]]}},
     "nests deeper than 2"),
    (function(pre_ops=["abs", "abs", "abs"]), "pre must be a list of at most 2"),
    (function(red="x" * 5000), "unknown reduction 'xxxx"),
    ("[1, 2", "not valid JSON"),
    ("[]", "one JSON object"),
    ('{"format": "dsa-function", "version": 1, "transform": [], "map": {"kind": "owl", "lambda": 1' + "0" * 5000 + "}}",
     "not valid JSON"),
]


@pytest.mark.parametrize("document,reason", MALFORMED)
def test_malformed_files_one_line_exit_2(capsys, tmp_path, document, reason):
    path = write_function(tmp_path / "f.json", document)
    for argv in (["--function", str(path)], ["show", str(path)], ["diff", str(path), str(path)]):
        code, _, err = run_main(capsys, *argv)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and reason in lines[0] and len(lines[0]) < 300, (argv, lines)


def test_too_large_file_and_bad_flags(capsys, tmp_path):
    big = write_function(tmp_path / "big.json", json.dumps({**function(), "meta": {"pad": "x" * 70000}}))
    code, _, err = run_main(capsys, "--function", str(big))
    assert code == 2 and "larger than 65536 bytes" in err
    code, _, err = run_main(capsys, "--tasks-dir", str(tmp_path))
    assert code == 2 and "go with --eval-zero-shot" in err
    code, _, err = run_main(capsys, "--eval-zero-shot", "boolq", "--tasks-dir", str(tmp_path / "none"))
    assert code == 2 and "not a directory" in err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    code, _, err = run_main(capsys, "--save", str(tmp_path / "taken"))
    assert code == 2 and "not empty" in err
    code, _, err = run_main(capsys, "--tune-spread")
    assert code == 2 and "needs --function" in err


# ---------------------------------------------------------------- compare


def test_compare_chooses_atp_on_validation_and_records_its_grid(calibrated, capsys, monkeypatch, tmp_path):
    """`apply.py compare` with ATP: every grid point is pruned and measured on the validation text;
    the chosen step is the grid's lowest, the table's ATP row is that same pruned model, and the
    grid lands in atp.json and under the table."""
    monkeypatch.setattr(apply, "_session", lambda args: EvaluationSession(calibrated))
    out = tmp_path / "cmp"
    try:
        code, stdout, err = run_main(capsys, "compare", "--sparsity", "0.7", "--allocations", "uniform", "atp",
                                     "--wanda-form", "cached", "--eval", "wiki/validation", "--eval-windows", "1",
                                     "--out", str(out))
    finally:
        calibrated.pruner.restore()
    assert code == 0, err
    choice = json.loads((out / "atp.json").read_text())["0.7"]
    grid = choice["grid"]
    assert [row["lambda"] for row in grid] == [0.04, 0.08, 0.12, 0.15, 0.2, 0.25]  # all legal at 70 % on 30 blocks
    assert [row["step"] for row in grid] == pytest.approx([2 * row["lambda"] / 29 for row in grid])
    chosen = min(grid, key=lambda row: row["wiki/validation"])
    assert choice["step"] == chosen["step"] and choice["chosen_on"] == "wiki/validation"
    rows = {row["method"]: row for row in csv_rows(out / "table.csv")}
    assert float(rows["atp"]["wiki/validation"]) == pytest.approx(chosen["wiki/validation"], rel=1e-9)
    assert float(rows["atp"]["wiki/validation"]) < float(rows["uniform"]["wiki/validation"])
    for row in rows.values():
        assert abs(float(row["achieved"]) - 0.7) < 2e-3
    assert f"step {chosen['step']:.5f} chosen on wiki/validation" in (out / "table.md").read_text()


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_tune_spread_gives_the_depth_ramp_atps_own_choice(calibrated, capsys, monkeypatch, tmp_path):
    """`--tune-spread` on ATP's ramp as a function file (depth through DSA's map) prunes every
    lambda of ATP's grid and keeps the lowest on the validation text: the grid's perplexities are
    `compare --allocations atp`'s, the chosen lambda is ATP's, and the report keeps the tuned file."""
    ramp = {"format": "dsa-function", "version": 1, "importance": {"operand": "depth", "pre": [], "reduction": "mean"},
            "transform": [], "post": "noop", "map": {"kind": "dsa", "lambda": 0.04}}
    path = write_function(tmp_path / "ramp.json", json.dumps(ramp))
    monkeypatch.setattr(apply, "_session", lambda args: EvaluationSession(calibrated))
    fast = ("--sparsity", "0.7", "--wanda-form", "cached", "--eval", "wiki/validation", "--eval-windows", "1")
    try:
        code, _, err = run_main(capsys, "--function", str(path), "--tune-spread", "--no-uniform", *fast,
                                "--json", str(tmp_path / "tuned.json"))
        assert code == 0, err
        code_atp, _, err_atp = run_main(capsys, "compare", "--allocations", "atp", *fast, "--out", str(tmp_path / "cmp"))
        assert code_atp == 0, err_atp
    finally:
        calibrated.pruner.restore()
    report = json.loads((tmp_path / "tuned.json").read_text())
    tuning = report["tune_spread"]
    atp = json.loads((tmp_path / "cmp" / "atp.json").read_text())["0.7"]
    assert [row["value"] for row in tuning["grid"]] == [row["lambda"] for row in atp["grid"]]
    assert [row["wiki/validation"] for row in tuning["grid"]] == pytest.approx(
        [row["wiki/validation"] for row in atp["grid"]], rel=1e-9)
    best = min(tuning["grid"], key=lambda row: row["wiki/validation"])
    chosen_atp = min(atp["grid"], key=lambda row: row["wiki/validation"])
    assert tuning["chosen"] == best["value"] == chosen_atp["lambda"] and tuning["file_constant"] == 0.04
    assert report["function"]["map"] == {"kind": "dsa", "lambda": best["value"]}
    assert report["ppl"]["wiki/validation"] == pytest.approx(best["wiki/validation"], rel=1e-9)
    assert f"dsa map constant {best['value']:g} chosen on wiki/validation" in err
    # The dense row is the unpruned model's, not the last grid point's.
    calibrated.pruner.restore()
    assert report["dense_ppl"]["wiki/validation"] == pytest.approx(calibrated.perplexity("wiki/validation", 1), rel=1e-9)
    assert report["dense_ppl"]["wiki/validation"] < 0.5 * min(row["wiki/validation"] for row in tuning["grid"])


def test_atp_windows_measure_the_choosing_texts_alone(calibrated, capsys, monkeypatch, tmp_path):
    """`--atp-text calib-next ptb/train --atp-windows 3`: each grid point's choosing texts are measured
    on 3 windows, the reported texts on --eval-windows (a choosing text that is also reported keeps
    its 3-window value); the step chosen is the lowest geometric mean of the two perplexities."""
    calls = []
    monkeypatch.setattr(apply, "_session", lambda args: EvaluationSession(calibrated))
    for method in ("perplexities", "window_log_perplexities"):
        measure = getattr(EvaluationSession, method)
        monkeypatch.setattr(EvaluationSession, method,
                            lambda self, texts, windows, label="", measure=measure: calls.append((list(texts), windows))
                            or measure(self, texts, windows, label))
    try:
        code, _, err = run_main(capsys, "compare", "--allocations", "atp", "--sparsity", "0.7", "--wanda-form", "cached",
                                "--atp-text", "calib-next", "ptb/train", "--atp-windows", "3", "--eval",
                                "wiki/validation", "calib-next", "--eval-windows", "1", "--out", str(tmp_path / "cmp"))
        assert code == 0, err
        atp = json.loads((tmp_path / "cmp" / "atp.json").read_text())["0.7"]
        grid_calls = calls[1:1 + 2 * len(atp["grid"])]  # after the dense row
        assert grid_calls == [(["calib-next", "ptb/train"], 3), (["wiki/validation"], 1)] * len(atp["grid"])
        both = "calib-next + ptb/train"
        assert atp["windows"] == 3 and atp["chosen_on"] == both
        for row in atp["grid"]:
            assert row[both] == pytest.approx(math.sqrt(row["calib-next"] * row["ptb/train"]), rel=1e-12)
        assert atp["step"] == min(atp["grid"], key=lambda row: row[both])["step"]
        assert f"chosen on {both}" in err
        last = atp["grid"][-1]
        EvaluationSession(calibrated).prune_cached(baseline_ratios("atp", calibrated, 0.7, BaselineOptions(atp_step=last["step"]))[0])
        assert last["calib-next"] == pytest.approx(calibrated.perplexity("calib-next", 3), rel=1e-9)
        assert last["ptb/train"] == pytest.approx(calibrated.perplexity("ptb/train", 3), rel=1e-9)
    finally:
        calibrated.pruner.restore()


def test_tune_z_keeps_the_files_constant_unless_clearly_beaten(calibrated, capsys, monkeypatch, tmp_path):
    """`--tune-spread --tune-z Z`: the file's own constant (0.1, off ATP's grid, so measured too)
    is the reference; the grid's lowest replaces it only when the paired per-window test puts it
    more than Z standard errors lower. Z = 1e6 always keeps it; Z = 0.001 takes the lowest when
    it is lower at all. The report records the per-window values the test is recomputed from."""
    ramp = {"format": "dsa-function", "version": 1, "importance": {"operand": "depth", "pre": [], "reduction": "mean"},
            "transform": [], "post": "noop", "map": {"kind": "dsa", "lambda": 0.1}}
    path = write_function(tmp_path / "ramp.json", json.dumps(ramp))
    monkeypatch.setattr(apply, "_session", lambda args: EvaluationSession(calibrated))
    fast = ("--sparsity", "0.7", "--wanda-form", "cached", "--no-uniform", "--atp-text", "calib-next",
            "--atp-windows", "3", "--eval", "wiki/validation", "--eval-windows", "1")
    reports = {}
    try:
        for z in ("1e6", "0.001"):
            code, _, err = run_main(capsys, "--function", str(path), "--tune-spread", "--tune-z", z, *fast,
                                    "--json", str(tmp_path / f"z{z}.json"))
            assert code == 0, err
            reports[z] = json.loads((tmp_path / f"z{z}.json").read_text())
    finally:
        calibrated.pruner.restore()
    strict, loose = reports["1e6"]["tune_spread"], reports["0.001"]["tune_spread"]
    assert [row["value"] for row in strict["grid"]] == [0.04, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25]
    lowest = min(strict["grid"], key=lambda row: row["calib-next"])
    own = next(row for row in strict["grid"] if row["value"] == 0.1)
    diffs = [a - b for a, b in zip(lowest["window_log_ppl"]["calib-next"], own["window_log_ppl"]["calib-next"])]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    z = mean / (sd / math.sqrt(3)) if sd else 0.0
    for record in (strict, loose):
        assert record["lowest"] == lowest["value"] and record["reference"] == 0.1
        assert record["z"] == pytest.approx(z, rel=1e-9, abs=1e-12)
        for row in record["grid"]:
            assert math.exp(sum(row["window_log_ppl"]["calib-next"]) / 3) == pytest.approx(row["calib-next"], rel=1e-12)
    assert strict["chosen"] == 0.1 and reports["1e6"]["function"]["map"] == {"kind": "dsa", "lambda": 0.1}
    assert loose["chosen"] == (lowest["value"] if z < -0.001 else 0.1)
    assert reports["0.001"]["function"]["map"]["lambda"] == loose["chosen"]


def test_compare_measures_a_function_beside_the_baselines_and_pairs_them(calibrated, capsys, monkeypatch, tmp_path):
    """`compare --function tanh-ramp-70 --paired`: the function's row is in the baselines' table,
    pruned with the same pruner and measured on the same windows; paired.json holds every window's
    log-perplexity, and its statistic is the mean per-window log-ratio, its standard error and the
    windows won, recomputed here by hand; the function's windows are its own ratios' prune."""
    monkeypatch.setattr(apply, "_session", lambda args: EvaluationSession(calibrated))
    out = tmp_path / "cmp"
    try:
        code, stdout, err = run_main(capsys, "compare", "--sparsity", "0.7", "--allocations", "uniform",
                                     "--function", "tanh-ramp-70", "--paired", "--wanda-form", "cached",
                                     "--eval", "wiki/test", "--eval-windows", "4", "--out", str(out))
        assert code == 0, err
        rows = {row["method"]: row for row in csv_rows(out / "table.csv")}
        paired = json.loads((out / "paired.json").read_text())
        session = EvaluationSession(calibrated)
        ratios, _ = function_ratios(load_function("tanh-ramp-70"), session.block_matrices, session.n_blocks,
                                    session.sizes, 0.7)
        session.prune(ratios, "wanda", wanda_form="cached")
        own = session.window_log_perplexities(["wiki/test"], 4)["wiki/test"]
    finally:
        calibrated.pruner.restore()
    assert sorted(rows) == ["tanh-ramp-70", "uniform"]
    for row in rows.values():
        assert abs(float(row["achieved"]) - 0.7) < 2e-3
    function, uniform = paired["window_log_ppl"]["tanh-ramp-70@0.7"]["wiki/test"], paired["window_log_ppl"]["uniform@0.7"]["wiki/test"]
    assert function == pytest.approx(own, rel=1e-12) and len(function) == len(uniform) == 4
    row, = paired["rows"]
    assert (row["function"], row["against"], row["text"], row["windows"]) == ("tanh-ramp-70", "uniform", "wiki/test", 4)
    diffs = [f - u for f, u in zip(function, uniform)]
    mean = sum(diffs) / 4
    error = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3 / 4)
    assert row["difference"] == pytest.approx(mean, rel=1e-12) and row["standard_error"] == pytest.approx(error, rel=1e-12)
    assert row["z"] == pytest.approx(mean / error, rel=1e-12) and row["windows_lower"] == sum(d < 0 for d in diffs)
    assert float(rows["tanh-ramp-70"]["wiki/test"]) == pytest.approx(math.exp(sum(function) / 4), rel=1e-12)
    assert row["against_perplexity"] == pytest.approx(float(rows["uniform"]["wiki/test"]), rel=1e-12)
    assert "| 70% | tanh-ramp-70 | uniform | wiki/test |" in (out / "paired.md").read_text()
    # the depth ramp beats uniform at 70 % on every window (measured: 218 vs 387, z = -10.9)
    assert 100 < row["perplexity"] < 0.8 * row["against_perplexity"] < 800 and row["z"] < -3 and row["windows_lower"] == 4
    assert "tanh-ramp-70" in (out / "table.md").read_text() and "tanh-ramp-70" in stdout


def test_compare_paired_needs_functions_and_windows(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(apply, "_session", lambda args: pytest.fail("a model was loaded"))
    for argv in (["--paired"], ["--paired", "--function", "tanh-ramp-70", "--eval-windows", "1"]):
        code, _, err = run_main(capsys, "compare", "--allocations", "uniform", "--out", str(tmp_path / "c"), *argv)
        assert code == 2 and "--paired tests each --function" in err and not (tmp_path / "c").exists()
    code, _, err = run_main(capsys, "compare", "--function", "tanh-ramp-70", "tanh-ramp-70", "--out", str(tmp_path / "c"))
    assert code == 2 and "given twice" in err


# ---------------------------------------------------------------- options


def option_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"\s+-", line)]


@pytest.mark.parametrize("command", apply.COMMANDS)
def test_help_lists_at_most_20_options_and_help_all_every_one(capsys, monkeypatch, command):
    """--help shows the options most runs change (at most 20 lines, whatever the terminal's width);
    --help-all shows every option and exits 0; the hidden ones are still accepted."""
    for columns in ("60", "80", "200"):
        monkeypatch.setenv("COLUMNS", columns)
        code, short, _ = run_main(capsys, command, "--help")
        assert code == 0 and len(option_lines(short)) <= 20, (command, columns, option_lines(short))
    code, full, _ = run_main(capsys, command, "--help-all")
    assert code == 0 and len(option_lines(full)) >= len(option_lines(short))
    parser = apply.build_parser(show_all=True)
    subparser = next(a for a in parser._actions if isinstance(a, apply.argparse._SubParsersAction)).choices[command]
    formatter = subparser._get_formatter()
    for action in subparser._actions:
        assert action.help is None or len(formatter._expand_help(action)) <= 200, action.option_strings
        shown = all(flag in full for flag in action.option_strings)
        assert shown, action.option_strings  # --help-all lists every option
    if command == "run":
        assert "--owl-m" in full and "--owl-m" not in short and "--lora-rank" not in short
        assert "(default: 0.7)" in short  # the sparsity


def test_show_and_diff_refuse_pruning_options(capsys, tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(FUNCTION))
    for argv in (["show", str(path)], ["diff", str(path), str(path)]):
        for option in (["--pruner", "wanda"], ["--eval-windows", "2"], ["--owl-m", "5"], ["--atp-text", "ptb/train"]):
            code, _, err = run_main(capsys, *argv, *option)
            assert code == 2 and "unrecognized arguments" in err, (argv, option)
