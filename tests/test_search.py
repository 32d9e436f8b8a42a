"""The search engine on the real model: seeds, random genomes, kill-and-resume, split hygiene."""
import json
import random

import pytest
import torch

from dsa.allocation.allocate import baseline_ratios
from dsa.functions.files import from_root, to_names
from dsa.functions.genome import SEEDS, seed_names
from dsa.functions.pipeline import features_on, prefix_values
from dsa.functions.replay import function_ratios, load_function
from dsa.search import checkpoint, runner
from dsa.search.evolution import Search, SearchConfig, SearchState
from dsa.search.fitness import score
from evaluators.session import EvaluationSession

TINY = SearchConfig(population=4, offspring=4, promote=1, generations=2, fitness_windows=2, screen_windows=1, seed=3)


def tiny_run_config(tmp_path, name):
    return runner.RunConfig(report_texts=("wiki/test",), report_windows=1, name=name,
                            results_dir=str(tmp_path / "results"), checkpoint_dir=str(tmp_path / "checkpoints"),
                            search=TINY)


@pytest.mark.parametrize("method", SEEDS)
def test_seeds_reproduce_baselines(bench, method):
    session = EvaluationSession(bench)
    search = Search(SearchConfig(), bench.sizes, features_on(session.block_matrices, session.n_blocks), evaluator=None)
    ratios = search.ratios_of(search.individual(seed_names(method)))
    expected, _ = baseline_ratios(method, bench, 0.7)
    assert ratios == expected


def test_random_genomes_never_crash(bench):
    """Hundreds of random functions (tree-shaped ones too) on crops of the real block matrices."""
    def cropped(operand, index):
        return [m[:48, :64] for m in EvaluationSession(bench).block_matrices(operand, index)]

    features = lambda node: prefix_values(node, cropped, len(bench.blocks))  # noqa: E731
    search = Search(SearchConfig(arithmetic=True), bench.sizes, features, evaluator=None)
    random.seed(0)
    valid = 0
    for _ in range(300):
        ind = search.random_individual()
        ratios = search.ratios_of(ind)
        if ratios is None:
            continue
        valid += 1
        r = torch.tensor(ratios, dtype=torch.float64)
        assert ((r >= 0) & (r < 1)).all()
        assert abs(float((r * bench.sizes).sum() / bench.sizes.sum()) - 0.7) < 1e-6
    assert valid > 200


def test_function_json_round_trip(bench):
    search = Search(SearchConfig(arithmetic=True), bench.sizes, None, evaluator=None)
    random.seed(1)
    for _ in range(200):
        ind = search.random_individual()
        document = json.loads(json.dumps(from_root(search.root(ind))))
        again = from_root(search.root(search.individual(to_names(document))))
        assert again == document


def test_kill_and_resume_equals_uninterrupted(bench, tmp_path, monkeypatch):
    seen = []
    original = bench.windows
    monkeypatch.setattr(bench, "windows", lambda text, count: seen.append(text) or original(text, count))

    whole = runner.run(tiny_run_config(tmp_path, "whole"), bench=bench)
    seen.clear()  # the finished run's report read the test split; the next run stops before its report
    assert runner.run(tiny_run_config(tmp_path, "killed"), bench=bench, stop_after=1) is None
    assert set(seen) == {"wiki/validation"}  # selection never touched a test split
    document = checkpoint.load(tmp_path / "checkpoints" / "killed")
    assert document["state"]["generation"] == 1
    resumed = runner.run(runner.RunConfig.from_dict(document["run"]), state=SearchState(**document["state"]), bench=bench)

    assert resumed["best"]["function"] == whole["best"]["function"]
    assert resumed["best"]["val_ppl"] == whole["best"]["val_ppl"]
    assert resumed["best"]["test_ppl"] == whole["best"]["test_ppl"]
    assert resumed["history"] == whole["history"]
    # The report: test numbers for the best function and every baseline; seeds are in the search.
    assert set(whole["baselines"]) == {"uniform", "owl", "alphapruning"}
    assert whole["best"]["val_ppl"] <= min(b["val_ppl"] for b in whole["baselines"].values()) + 1e-9
    for key in ("evaluations", "cache_hits", "feature_cache_hits", "wall_s", "config"):
        assert key in whole
    out = tmp_path / "results" / "whole"
    # The exported function file replays to exactly the ratios the search found.
    replayed, _ = function_ratios(load_function(out / "best.json"), EvaluationSession(bench).block_matrices,
                                  len(bench.blocks), bench.sizes, TINY.sparsity)
    assert replayed == whole["best"]["ratios"]
    for name in ("best.json", "formula.txt", "ratios.csv", "report.json", "report.md", "convergence.png", "allocation.png"):
        assert (out / name).stat().st_size > 0, name


def test_kl_objective(dense_bench):
    """KL to the dense model: zero for the dense allocation, positive and growing with sparsity."""
    session = EvaluationSession(dense_bench, "wiki/validation", 1, objective="kl")
    n = session.n_blocks
    dense, half, seventy = (score(session.window_losses([s] * n, [0]), session.tokens_per_window, "kl")
                            for s in (0.0, 0.5, 0.7))
    assert abs(dense) < 1e-4
    assert 0 < half < seventy


BREED = """
import hashlib, random, sys
junk = [type(f"J{i}", (), {}) for i in range(int(sys.argv[1]))]  # moves later classes in memory
from dsa.search.evolution import Search, SearchConfig
search = Search(SearchConfig(), None, None, evaluator=None)
random.seed(5)
population = [search.random_individual() for _ in range(8)]
out = []
for _ in range(30):
    a, b = (search.toolbox.clone(random.choice(population)) for _ in range(2))
    search.toolbox.mate(a, b)
    (a,) = search.mutate(a)
    out += [str(a), str(b)]
print(hashlib.sha256("|".join(out).encode()).hexdigest())
"""


def test_breeding_is_the_same_in_every_process():
    """Same seed, same offspring in a fresh process whatever its memory layout (DEAP's own
    crossover picks the node type from a set of classes, ordered by address)."""
    import subprocess
    import sys

    digests = {subprocess.run([sys.executable, "-c", BREED, str(junk)], capture_output=True, text=True,
                              check=True).stdout for junk in (0, 7, 50)}
    assert len(digests) == 1 and len(digests.pop().strip()) == 64
