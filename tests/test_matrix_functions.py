"""Per-matrix functions: the pipeline run on each prunable matrix, one ratio offset per role, the
budget exact over parameters; as data (JSON, sympy), replayed, exported and searched."""
import json
import random

import pytest
import torch

from dsa.allocation.matrices import ROLES, MatrixUnits, expand, flatten, matrix_table, parameter_sparsity
from dsa.allocation.ratios import dsa_map
from dsa.core.errors import UserError
from dsa.functions.codec import const_name, const_value
from dsa.functions.files import DSA_PUBLISHED, FunctionError, describe, from_root, to_names
from dsa.functions.genome import OFFSET_GRID, MATRIX_OPERANDS, build_pset, names_of, random_subtree, seed_genomes
from dsa.functions.pipeline import parse
from dsa.functions.replay import function_ratios, function_root, load_function, seed_names
from dsa.protocol.allocation import matrix_ratios_on, ratios_on
from dsa.search.fitness import FitnessCache, ratio_key
from evaluators.architecture import model_layout
from evaluators.session import EvaluationSession

OFFSETS = {"q": 0.04, "k": 0.06, "v": -0.06, "o": 0.0, "gate": 0.02, "up": 0.0, "down": -0.04}
RAMP = {"format": "dsa-function", "version": 1, "importance": {"operand": "depth", "pre": [], "reduction": "mean"},
        "transform": [], "post": "noop", "map": {"kind": "dsa", "lambda": 0.12}}


@pytest.fixture(scope="module")
def layout():
    return model_layout("smollm2-135m")


def test_offset_constants_round_trip_with_their_sign():
    for value in OFFSET_GRID:
        assert const_value(const_name("off", value)) == value
    assert const_name("off", -0.04) == "off_m0p04"


def test_a_depth_function_with_role_offsets_equals_a_hand_computation(layout):
    """ratio = S + 2 lambda (d - mean_w d) + b_role, then one shift: mean_w(ratio) == S exactly."""
    units = MatrixUnits.of(layout.blocks)
    ratios, values = function_ratios({**RAMP, "roles": OFFSETS}, layout.block_matrices, layout.n_blocks, None, 0.7,
                                     units=units)
    table = matrix_table(layout.blocks)
    sizes = torch.tensor([float(c) for *_, c in table], dtype=torch.float64)
    depth = torch.tensor([i / (layout.n_blocks - 1) for i, *_ in table], dtype=torch.float64)
    w = sizes / sizes.sum()
    raw = 0.7 + 0.24 * (depth - (w * depth).sum()) + torch.tensor([OFFSETS[r] for *_, r, _ in table], dtype=torch.float64)
    expected = raw + (0.7 - (w * raw).sum())
    assert torch.allclose(torch.tensor(ratios, dtype=torch.float64), expected, atol=1e-12)
    assert values == pytest.approx(depth.tolist())
    assert abs(float((sizes * torch.tensor(ratios, dtype=torch.float64)).sum()) - 0.7 * float(sizes.sum())) < 1e-6 * float(sizes.sum())


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m", "qwen2.5-0.5b"])
def test_zero_offsets_give_exactly_the_block_function(model):
    """A depth function run per matrix with no offsets: every matrix at its block's ratio."""
    layout = model_layout(model)
    block, _ = ratios_on(layout, 0.7, RAMP)
    matrix, _ = matrix_ratios_on(layout, 0.7, function={**RAMP, "roles": dict.fromkeys(ROLES, 0.0)})
    assert flatten(matrix, layout.blocks) == pytest.approx(flatten(expand(block, layout.blocks), layout.blocks), abs=1e-12)
    assert parameter_sparsity(matrix, layout.blocks) == pytest.approx(0.7, abs=1e-12)


def test_share_is_each_matrix_share_of_its_block(layout):
    share = {**RAMP, "importance": {"operand": "share", "pre": [], "reduction": "mean"}, "roles": dict.fromkeys(ROLES, 0.0)}
    _, values = function_ratios(share, layout.block_matrices, layout.n_blocks, None, 0.7, units=MatrixUnits.of(layout.blocks))
    block_size = float(layout.sizes[0])
    assert values[:7] == pytest.approx([c / block_size for _, _, _, c in matrix_table(layout.blocks)[:7]])
    with pytest.raises(FunctionError, match="share operand needs a per-matrix function"):
        to_names({k: v for k, v in share.items() if k != "roles"})


def test_per_matrix_scores_reduce_each_matrix_alone(session):
    """wanda -> mean per matrix equals the mean of that matrix's own Wanda scores."""
    function = {**RAMP, "importance": {"operand": "wanda", "pre": [], "reduction": "mean"}, "roles": OFFSETS}
    blocks = session.calibrated.blocks
    ratios, values = matrix_ratios_on(session, 0.7, function=function)
    scores = [m.double().mean().item() for b in blocks for m in session.block_matrices("wanda", b.index)]
    assert values == pytest.approx(scores, rel=1e-6)
    assert parameter_sparsity(ratios, blocks) == pytest.approx(0.7, abs=1e-9)
    assert session.prune(ratios, "wanda") == pytest.approx(0.7, abs=2e-3)


def test_files_round_trip_and_refuse_bad_roles():
    document = {**DSA_PUBLISHED, "roles": OFFSETS}
    assert from_root(function_root(document)) == document
    assert "b_role" in describe(document) and "v -0.06" in describe(document)
    for roles, message in (({**OFFSETS, "x": 0.0}, "one offset for each of q, k, v"),
                           ({**OFFSETS, "v": 0.7}, r"role offset v 0.7 is outside \[-0.5, 0.5\]"),
                           ({**OFFSETS, "q": True}, "role offset q must be a number")):
        with pytest.raises(FunctionError, match=message):
            to_names({**document, "roles": roles})


def test_a_per_matrix_function_is_refused_where_ratios_are_per_block(layout, tmp_path):
    with pytest.raises(UserError, match="one ratio per matrix: use matrix granularity"):
        ratios_on(layout, 0.7, {**RAMP, "roles": OFFSETS})
    path = tmp_path / "m.json"
    path.write_text(json.dumps({**RAMP, "roles": OFFSETS}))
    with pytest.raises(UserError, match="search with --granularity matrix"):
        seed_names(str(path), MATRIX_OPERANDS, False, "block")
    assert seed_names("tanh-ramp-70", MATRIX_OPERANDS, False, "matrix")[0] == "role_offsets"


def test_matrix_genomes_stay_valid_under_breeding():
    """Random trees, seeds and DEAP's mutations at matrix granularity are always valid functions."""
    from deap import gp

    pset = build_pset(operands=MATRIX_OPERANDS, granularity="matrix")
    rng = random.Random(3)
    random.seed(3)
    trees = [gp.PrimitiveTree(random_subtree(pset, rng=rng)) for _ in range(40)]
    trees += [gp.PrimitiveTree([pset.mapping[n] for n in names]) for names in seed_genomes(granularity="matrix").values()]
    for tree in trees:
        mutated, = gp.mutNodeReplacement(gp.PrimitiveTree(tree), pset)
        for candidate in (tree, mutated):
            document = from_root(parse(names_of(candidate), lambda n: pset.mapping[n].arity))
            assert from_root(function_root(document)) == document  # noops may move; the function does not
            assert names_of(candidate)[0] == "role_offsets" and set(document["roles"]) == set(ROLES)


def test_fitness_jobs_carry_per_matrix_entries_and_share_keys(layout):
    units = MatrixUnits.of(layout.blocks)
    flat = [0.7] * len(units.flat_roles)
    cache = FitnessCache(None, None, units=units)
    entries = cache.payload(flat)
    assert len(entries) == layout.n_blocks and entries[0]["self_attn.v_proj"] == 0.7
    assert cache.payload([0.7] * layout.n_blocks) == [0.7] * layout.n_blocks  # a baseline's block ratios
    assert ratio_key(flat) == ratio_key(entries)


def test_export_and_search_cli_at_matrix_granularity(tmp_path, capsys):
    """export --granularity matrix of a per-matrix depth function from the architecture alone;
    a per-matrix file without the flag, and share at block granularity, are one-line errors."""
    import apply
    import search

    path = tmp_path / "m.json"
    path.write_text(json.dumps({**RAMP, "roles": OFFSETS}))
    out = tmp_path / "export"
    apply.main(["export", "--function", str(path), "--model", "qwen2.5-0.5b", "--sparsity", "0.7",
                "--granularity", "matrix", "--out", str(out)])
    rows = (out / "ratios.csv").read_text().splitlines()
    assert rows[0] == "block,name,role,params,ratio" and len(rows) == 1 + 24 * 7
    assert "168 matrices in 24 blocks" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        apply.main(["export", "--function", str(path), "--model", "qwen2.5-0.5b", "--out", str(tmp_path / "e2")])
    assert exit_info.value.code == 2 and "export it with --granularity matrix" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        search.main(["--operands", "share", "--name", "x", "--results-dir", str(tmp_path), "--checkpoint-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "'share' is not one of" in capsys.readouterr().err


def test_a_matrix_granularity_search_runs_end_to_end(calibrated, tmp_path):
    """One generation in this process: every genome is per-matrix, the report holds each matrix's
    ratios (matrix_ratios.csv, heatmap.png) and best.json replays to the ratios it reports."""
    from dsa.search import runner
    from dsa.search.evolution import SearchConfig

    from conftest import TEST_CONFIG

    search = SearchConfig(population=4, offspring=2, promote=1, generations=1, fitness_windows=1, seed=1,
                          granularity="matrix", operands=("depth", "share"))
    config = runner.RunConfig(report_texts=("wiki/test",), report_windows=1, name="matrix", model_config=TEST_CONFIG,
                              results_dir=str(tmp_path / "results"), checkpoint_dir=str(tmp_path / "checkpoints"),
                              search=search, rank_check=0, report_baselines=("uniform",))
    report = runner.run(config, calibrated=calibrated)
    out = tmp_path / "results" / "matrix"
    rows = (out / "matrix_ratios.csv").read_text().splitlines()
    assert rows[0] == "target,allocation,block,matrix,role,ratio" and len(rows) == 1 + 30 * 7
    assert (out / "heatmap.png").stat().st_size > 0
    best = json.loads((out / "best.json").read_text())
    assert set(best["roles"]) == set(ROLES) and report["kind"].startswith("a per-matrix function fitted to")
    reported = report["best"]["ratios"]
    assert all(isinstance(entry, dict) and len(entry) == 7 for entry in reported)
    blocks = calibrated.blocks
    replayed, _ = matrix_ratios_on(EvaluationSession(calibrated), 0.7, function=best)
    assert flatten(replayed, blocks) == pytest.approx(flatten(reported, blocks), abs=1e-12)
    assert parameter_sparsity(reported, blocks) == pytest.approx(0.7, abs=1e-9)
    assert report["best"]["test_ppl"]["wiki/test"] <= report["baselines"]["uniform"]["test_ppl"]["wiki/test"]
