"""The search engine on the real model: seeds, random genomes, kill-and-resume, split hygiene."""
import dataclasses
import json
import math
import random
import statistics

import pytest
import torch

from dsa.allocation.allocate import BaselineOptions, baseline_ratios
from dsa.functions.files import from_root, to_names
from dsa.functions.genome import SEEDS, names_of, seed_genomes, seed_names
from dsa.functions.pipeline import features_on, prefix_values
from dsa.functions.replay import function_ratios, load_function
from dsa.search import checkpoint, runner
from dsa.search.evolution import Search, SearchConfig, SearchState, check_state
from dsa.search.fitness import score
from evaluators.session import EvaluationSession

from conftest import TEST_CONFIG

TINY = SearchConfig(population=4, offspring=4, promote=1, generations=2, fitness_windows=2, screen_windows=1, seed=3)


def tiny_run_config(tmp_path, name):
    return runner.RunConfig(report_texts=("wiki/test",), report_windows=1, name=name, model_config=TEST_CONFIG,
                            results_dir=str(tmp_path / "results"), checkpoint_dir=str(tmp_path / "checkpoints"),
                            search=TINY, rank_check=2, report_baselines=("uniform", "alphapruning", "atp"))


@pytest.mark.parametrize("label", SEEDS)
def test_seeds_reproduce_baselines(calibrated, label):
    """Each seed function gives its baseline's ratios: bit-exact where both compute the same way,
    to 1e-12 for ATP (a ramp through DSA's map vs ATP's own progression) and DSA's published function."""
    session = EvaluationSession(calibrated)
    search = Search(SearchConfig(), calibrated.sizes, features_on(session.block_matrices, session.n_blocks), evaluator=None)
    ratios = search.ratios_of(search.individual(seed_names(label)))
    method, _, lam = label.partition("@")
    options = BaselineOptions(atp_step=2 * float(lam) / (session.n_blocks - 1)) if lam else BaselineOptions()
    expected, _ = baseline_ratios(method, calibrated, 0.7, options)
    if method in ("atp", "dsa-published"):
        assert ratios == pytest.approx(expected, abs=1e-12)
    else:
        assert ratios == expected


def test_random_genomes_never_crash(calibrated):
    """Hundreds of random functions (tree-shaped ones too) on crops of the real block matrices."""
    def cropped(operand, index):
        return [m[:48, :64] for m in EvaluationSession(calibrated).block_matrices(operand, index)]

    features = lambda node: prefix_values(node, cropped, len(calibrated.blocks))  # noqa: E731
    search = Search(SearchConfig(arithmetic=True), calibrated.sizes, features, evaluator=None)
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
        assert abs(float((r * calibrated.sizes).sum() / calibrated.sizes.sum()) - 0.7) < 1e-6
    assert valid > 200


def test_function_json_round_trip(calibrated):
    search = Search(SearchConfig(arithmetic=True), calibrated.sizes, None, evaluator=None)
    random.seed(1)
    for _ in range(200):
        ind = search.random_individual()
        document = json.loads(json.dumps(from_root(search.root(ind))))
        again = from_root(search.root(search.individual(to_names(document))))
        assert again == document


def test_kill_and_resume_equals_uninterrupted(calibrated, tmp_path, monkeypatch):
    seen = []
    original = calibrated.windows
    monkeypatch.setattr(calibrated, "windows", lambda text, count: seen.append(text) or original(text, count))

    whole = runner.run(tiny_run_config(tmp_path, "whole"), calibrated=calibrated)
    seen.clear()  # the finished run's report read the test split; the next run stops before its report
    assert runner.run(tiny_run_config(tmp_path, "killed"), calibrated=calibrated, stop_after=1) is None
    assert set(seen) == {"wiki/validation"}  # selection never touched a test split
    document = checkpoint.load(tmp_path / "checkpoints" / "killed")
    assert document["state"]["generation"] == 1
    # A report option changed on resume is what the checkpoint remembers, even before a generation runs.
    changed = dataclasses.replace(runner.RunConfig.from_dict(document["run"]), holdout_tune_windows=3)
    assert runner.run(changed, state=SearchState(**document["state"]), calibrated=calibrated, stop_after=1) is None
    again = checkpoint.load(tmp_path / "checkpoints" / "killed")
    assert again["run"]["holdout_tune_windows"] == 3 and again["state"] == document["state"]
    # The report's baselines may change on resume too: ATP's grid (6 final-pruner prunes) is checked on `whole`.
    resumed = runner.run(dataclasses.replace(runner.RunConfig.from_dict(document["run"]),
                                             report_baselines=("uniform", "alphapruning")),
                         state=SearchState(**document["state"]), calibrated=calibrated)

    assert resumed["best"]["function"] == whole["best"]["function"]
    assert resumed["best"]["val_ppl"] == whole["best"]["val_ppl"]
    assert resumed["best"]["test_ppl"] == whole["best"]["test_ppl"]
    assert resumed["history"] == whole["history"]
    # The report: test numbers for the best function and every baseline; seeds are in the search.
    assert set(whole["baselines"]) == {"uniform", "alphapruning", "atp"}
    assert whole["best"]["val_ppl"] <= min(b["val_ppl"] for b in whole["baselines"].values()) + 1e-9
    for key in ("evaluations", "cache_hits", "feature_cache_hits", "wall_s", "config"):
        assert key in whole
    # The final pruner's truth beside the search's form, and the two forms' rank agreement.
    (table,) = whole["targets"].values()
    assert table["trained"]
    # ATP's lambda chosen as apply.py compare chooses it: the final pruner (sequential Wanda) on the
    # fitness text, the report's windows; the lowest of the recorded grid, whose point is the ATP row.
    atp = table["atp"]
    assert (atp["chosen_on"], atp["windows"], atp["pruner"]) == ("wiki/validation", 1, "wanda")
    assert [row["lambda"] for row in atp["grid"]] == [0.04, 0.08, 0.12, 0.15, 0.2, 0.25]
    chosen = min(atp["grid"], key=lambda row: row["wiki/validation"])
    assert atp["lambda"] == chosen["lambda"] and atp["step"] == chosen["step"] == 2 * chosen["lambda"] / 29
    assert table["allocations"]["atp"]["final"]["wiki/validation"] == pytest.approx(chosen["wiki/validation"], rel=1e-9)
    assert math.exp(chosen["window_log_ppl"]["wiki/validation"][0]) == pytest.approx(chosen["wiki/validation"], rel=1e-12)
    assert atp == json.loads((tmp_path / "results" / "whole" / "report.json").read_text())["targets"][
        f"{calibrated.config.model}@0.7"]["atp"]  # recorded in the report
    for entry in table["allocations"].values():
        assert set(entry["final"]) == {"wiki/validation", "wiki/test"} and min(entry["final"].values()) > 1
    assert len(table["allocations"]["best"]["block_metric"]) == len(calibrated.blocks)
    # `search.py report` writes the finished run's report again with other report-time choices and
    # evolves nothing: the same best and history, only the baselines asked for.
    import search as search_cli

    monkeypatch.setattr(search_cli, "run", lambda config, state, workers, address:
                        runner.run(config, state, calibrated=calibrated))
    search_cli.main(["report", "whole", "--checkpoint-dir", str(tmp_path / "checkpoints"),
                     "--report-baselines", "uniform", "--rank-check", "0"])
    again = json.loads((tmp_path / "results" / "whole" / "report.json").read_text())
    assert again["best"]["function"] == whole["best"]["function"] and again["history"] == whole["history"]
    assert again["best"]["test_ppl"] == whole["best"]["test_ppl"] and set(again["baselines"]) == {"uniform"}
    assert again["evaluations"] == whole["evaluations"]
    assert table["forms"]["count"] == 2 and -1 <= table["forms"]["spearman"] <= 1
    # The unpruned reference row: the dense model on the same texts and windows, below every pruned row.
    EvaluationSession(calibrated).restore()
    assert table["dense"] == {text: pytest.approx(calibrated.perplexity(text, 1), rel=1e-9)
                              for text in ("wiki/validation", "wiki/test")}
    assert all(table["dense"][text] < entry["final"][text] for entry in table["allocations"].values()
               for text in table["dense"])
    out = tmp_path / "results" / "whole"
    # The exported function file replays to exactly the ratios the search found.
    replayed, _ = function_ratios(load_function(out / "best.json"), EvaluationSession(calibrated).block_matrices,
                                  len(calibrated.blocks), calibrated.sizes, TINY.sparsity)
    assert replayed == whole["best"]["ratios"]
    for name in ("best.json", "formula.txt", "ratios.csv", "report.json", "report.md", "convergence.png", "allocation.png"):
        assert (out / name).stat().st_size > 0, name
    assert f"| dense (unpruned) | - | {table['dense']['wiki/validation']:.3f} |" in (out / "report.md").read_text()


def test_kl_objective(dense_calibrated):
    """KL to the dense model: zero for the dense allocation, positive and growing with sparsity."""
    session = EvaluationSession(dense_calibrated, "wiki/validation", 1, objective="kl")
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


def test_per_block_mutations_keep_the_budget_exactly():
    """Every child of the per-block search meets the budget, equal-sized blocks or not."""
    from dsa.search.perblock import PerBlockSearch

    rng = random.Random(0)
    for sizes in (torch.full((30,), 7.0), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0] * 4)):
        search = PerBlockSearch(SearchConfig(mode="per-block"), sizes, evaluator=None)
        levels = [0] * len(sizes)
        for _ in range(300):
            levels = search.mutate(levels, rng)
            assert sum(levels) == 0
            assert search.budget_error(levels) < 1e-9
            ratios = search.ratios_of(levels)
            assert min(ratios) >= 0 and max(ratios) <= 0.99
        assert max(levels) > 0  # it moved


def test_per_block_search_resumes_to_the_same_result(calibrated, tmp_path):
    config = SearchConfig(mode="per-block", offspring=4, promote=1, generations=2, fitness_windows=2,
                          screen_windows=1, seed=3)

    def run_config(name):
        return runner.RunConfig(report_texts=("wiki/test",), report_windows=1, name=name, model_config=TEST_CONFIG,
                                results_dir=str(tmp_path / "results"), checkpoint_dir=str(tmp_path / "checkpoints"),
                                search=config, report_baselines=("uniform", "dlp"))

    whole = runner.run(run_config("whole"), calibrated=calibrated)
    assert runner.run(run_config("killed"), calibrated=calibrated, stop_after=1) is None
    document = checkpoint.load(tmp_path / "checkpoints" / "killed")
    resumed = runner.run(runner.RunConfig.from_dict(document["run"]), state=SearchState(**document["state"]), calibrated=calibrated)
    assert resumed["best"]["ratios"] == whole["best"]["ratios"]
    assert resumed["best"]["val_ppl"] == whole["best"]["val_ppl"] <= whole["baselines"]["uniform"]["val_ppl"]
    assert whole["best"]["function"] is None
    ratios = torch.tensor(whole["best"]["ratios"], dtype=torch.float64)
    assert abs(float((ratios * calibrated.sizes).sum() / calibrated.sizes.sum()) - 0.7) < 1e-9
    assert set(whole["baselines"]) == {"uniform", "dlp"}
    assert not (tmp_path / "results" / "whole" / "best.json").exists()


def test_multi_target_score_is_the_mean_log_ratio_to_uniform(calibrated):
    """Two targets (one model at 60 % and 70 %): a candidate's score is the mean over targets of
    log(ppl / ppl of uniform), each perplexity measured independently here."""
    from dsa.distributed.pool import InProcessPool
    from dsa.distributed.worker import Worker
    from dsa.search.evolution import Target
    from dsa.search.fitness import PoolEvaluator

    pool = InProcessPool({"m": Worker(calibrated, "wiki/validation", 2)})
    session = pool.workers["m"].session
    features = features_on(session.block_matrices, session.n_blocks)
    targets = [Target("m", s, calibrated.sizes, features, f"m@{s:g}|") for s in (0.6, 0.7)]
    search = Search(SearchConfig(), None, None, PoolEvaluator(pool, {"m": session.tokens_per_window}, "ppl"),
                    targets=targets)
    owl = search.individual(seed_names("owl"))
    allocation = search.allocation_of(owl)
    batches = []
    map_routed = pool.map_routed
    pool.map_routed = lambda method, jobs, desc=None: batches.append(len(jobs)) or map_routed(method, jobs, desc)
    (value,) = search.score([allocation], 2)
    assert batches == [4]  # both targets' candidate and uniform in one batch, not one target after the other
    by_hand = []
    for ratios, sparsity in zip(allocation, (0.6, 0.7)):
        owl_ppl = session.fitness_perplexity(ratios)
        uniform_ppl = session.fitness_perplexity([sparsity] * session.n_blocks)
        by_hand.append(math.log(owl_ppl / uniform_ppl))
    assert value == pytest.approx(sum(by_hand) / 2, rel=1e-9, abs=1e-12)
    assert allocation[0] != allocation[1]  # each target has its own ratios
    session.restore()


def test_final_select_scores_candidates_like_the_search_with_the_final_pruner(calibrated, tmp_path):
    """--final-select over two targets (one model at 60 % and 70 %): each candidate's score is the
    mean over targets of log(final-pruner ppl / uniform's), from the measured perplexities; the
    lowest is reported, whatever the search's own order."""
    from dsa.distributed.pool import InProcessPool
    from dsa.distributed.worker import Worker
    from dsa.search.evolution import Target
    from dsa.search.final_select import final_select
    from dsa.search.fitness import PoolEvaluator
    from dsa.search.pool_measurer import PoolMeasurer

    pool = InProcessPool({"m": Worker(calibrated, "wiki/validation", 1)})
    session = pool.workers["m"].session
    features = features_on(session.block_matrices, session.n_blocks)
    targets = [Target("m", s, calibrated.sizes, features, f"m@{s:g}|") for s in (0.6, 0.7)]
    search = Search(SearchConfig(), None, None, PoolEvaluator(pool, {"m": session.tokens_per_window}, "ppl"),
                    targets=targets)
    # The search ranked OWL first, AlphaPruning second, OWL again (a duplicate) third.
    search.population = [search.individual(seed_names(name)) for name in ("owl", "alphapruning", "owl")]
    for ind, value in zip(search.population, (-0.3, -0.2, -0.1)):
        ind.fitness.values = (value,)
    measured, measurer = [], PoolMeasurer(pool, "wanda")
    measure = measurer.measure
    measurer.measure = lambda routed, reads, desc="": measured.append((routed, measure(routed, reads, desc))) or measured[-1][1]
    chosen, record = final_select(search, measurer, 3, "wiki/validation", 1, "m")
    (routed, results), = measured  # one batch, validation only
    rows = [row for row, in results]
    assert all(set(row) == {"wiki/validation"} for row in rows) and len(routed) == 6  # 2 candidates + uniform, x2
    ppl = [row["wiki/validation"] for row in rows]
    by_hand = [(math.log(ppl[i] / ppl[2]) + math.log(ppl[3 + i] / ppl[5])) / 2 for i in range(2)]
    assert [c["final_score"] for c in record["candidates"]] == pytest.approx(by_hand, rel=1e-12)
    assert record["chosen"] == by_hand.index(min(by_hand))
    assert chosen is search.population[record["chosen"]]
    assert record["candidates"][1]["final_validation"] == {"m@0.6": ppl[1], "m@0.7": ppl[4]}
    assert 20 < min(ppl) and max(ppl) < 5000  # sequential Wanda at 60-70 % on SmolLM2, 256-token windows
    session.restore()


def test_report_prunes_an_allocation_equal_to_another_once(calibrated, tmp_path):
    """The report's final-pruner batch: a searched ramp equal to ATP's on the same model is pruned
    once and both get that result; a different allocation is pruned on its own."""
    from dsa.distributed.pool import InProcessPool
    from dsa.distributed.worker import Worker
    from dsa.protocol.measurer import final_perplexities
    from dsa.search.pool_measurer import PoolMeasurer

    pool = InProcessPool({"m": Worker(calibrated, "wiki/validation", 1)})
    n = pool.workers["m"].session.n_blocks
    uniform = [0.7] * n
    ramp = [0.6 + 0.2 * i / (n - 1) for i in range(n)]
    batches = []
    map_routed = pool.map_routed
    pool.map_routed = lambda method, jobs, desc=None: batches.append(len(jobs)) or map_routed(method, jobs, desc)
    rows = final_perplexities(PoolMeasurer(pool, "wanda"), [("m", ramp), ("m", uniform), ("m", [r + 1e-12 for r in ramp])],
                              ["wiki/validation", "wiki/test"], 1)
    assert batches == [2]
    assert rows[0] == rows[2] and rows[0] != rows[1]
    assert rows[0]["wiki/test"] < rows[1]["wiki/test"]  # the ramp beats uniform at 70 % on SmolLM2
    pool.workers["m"].session.restore()


def test_sequential_fitness_form_scores_full_evaluations_with_the_final_pruner(calibrated):
    """--fitness-form sequential: a full evaluation's fitness is the perplexity of the model pruned
    by sequential Wanda on the same windows (computed here by hand); screening stays cached, and
    the two forms' losses for one ratio vector live under different cache keys."""
    from dsa.distributed.pool import InProcessPool
    from dsa.distributed.worker import Worker
    from dsa.search.fitness import PoolEvaluator
    from evaluators.perplexity import perplexity

    pool = InProcessPool({"m": Worker(calibrated, "wiki/validation", 2)})
    session = pool.workers["m"].session
    config = SearchConfig(fitness_windows=2, screen_windows=1, fitness_form="sequential")
    search = Search(config, calibrated.sizes, features_on(session.block_matrices, session.n_blocks),
                    PoolEvaluator(pool, session.tokens_per_window, "ppl"))
    ratios = search.ratios_of(search.individual(seed_names("owl")))
    (screened,) = search.fitness([ratios], 1)
    (full,) = search.fitness([ratios], 2)
    session.prune(ratios, "wanda")  # sequential
    assert full == pytest.approx(perplexity(calibrated.loaded.model, session.windows, 2), rel=1e-6)
    session.prune_cached(ratios)
    assert screened == pytest.approx(perplexity(calibrated.loaded.model, session.windows[:1], 1), rel=1e-6)
    assert sorted(search.state.losses) == sorted([search.caches[0].key(ratios), "sequential:" + search.caches[0].key(ratios)])
    assert search.state.evaluations == 2
    session.restore()


def test_held_out_model_is_never_read_during_selection(calibrated, tmp_path, monkeypatch):
    """A held-out model is loaded only after the last generation, and reported as held-out."""
    from dsa.search import evolution
    from evaluators.assets import cache_dir
    from evaluators.calibrated import CalibratedModel

    other = str(cache_dir() / "models" / calibrated.config.model)  # the same weights under a second name
    phase, loads = {"selection": True}, []
    original_init, original_run = CalibratedModel.__init__, evolution.Search.run

    def recording_init(self, config):
        loads.append((config.model, phase["selection"]))
        original_init(self, config)

    def run_then_mark(self, *args, **kwargs):
        original_run(self, *args, **kwargs)
        phase["selection"] = False

    monkeypatch.setattr(CalibratedModel, "__init__", recording_init)
    monkeypatch.setattr(evolution.Search, "run", run_then_mark)
    # Texts read from the end of the search until the report starts: the --final-select step's.
    reads, reporting = [], {"on": False}
    windows, reports = calibrated.windows, runner.target_reports
    monkeypatch.setattr(calibrated, "windows", lambda text, count: reads.append((text, phase["selection"] or reporting["on"]))
                        or windows(text, count))
    monkeypatch.setattr(runner, "target_reports", lambda *args: reporting.update(on=True) or reports(*args))
    config = dataclasses.replace(tiny_run_config(tmp_path, "holdout"), holdout=(other,), rank_check=0,
                                 report_baselines=("uniform", "atp"), final_select=2,
                                 search=dataclasses.replace(TINY, generations=1))
    report = runner.run(config, calibrated=calibrated)
    assert loads == [(other, False)]  # the trained model is the shared calibrated; the held-out one came after
    # --final-select chose the reported function on the training model's validation text only.
    selection = report["final_select"]
    assert selection["count"] == 2 and {text for text, other_phase in reads if not other_phase} <= {"wiki/validation"}
    scores = [c["final_score"] for c in selection["candidates"]]
    assert selection["chosen"] == scores.index(min(scores)) and scores[0] != scores[1]
    trained = report["targets"][f"{calibrated.config.model}@0.7"]["allocations"]["best"]["final"]["wiki/validation"]
    assert min(scores) == pytest.approx(trained, rel=1e-9)  # the reported best is the chosen one
    rows = {row["target"]: row for row in report["transfer"]}
    assert rows[f"{other}@0.7"]["trained"] is False and rows[f"{calibrated.config.model}@0.7"]["trained"] is True
    # Same weights, same function: the replay on the "held-out" copy gives the same ratios.
    held = report["targets"][f"{other}@0.7"]["allocations"]["best"]["ratios"]
    assert held == pytest.approx(report["best"]["ratios"], abs=1e-12)
    assert report["targets"][f"{other}@0.7"]["dense"] == report["targets"][f"{calibrated.config.model}@0.7"]["dense"]
    # One training model: the held-out ATP takes its lambda (multi-model score 0 there), the same depth its step.
    trained_atp, held_atp = (report["targets"][f"{m}@0.7"]["atp"] for m in (calibrated.config.model, other))
    assert (held_atp["lambda"], held_atp["step"]) == (trained_atp["lambda"], trained_atp["step"])
    assert {p["lambda"]: p["score"] for p in held_atp["grid"]}[held_atp["lambda"]] == 0.0


def test_holdout_tuning_chooses_on_its_texts_alone(calibrated, tmp_path, monkeypatch):
    """`--holdout-tune calib-next ptb/train --holdout-tune-z 2`: on a held-out model the replayed
    function's map constant and ATP's lambda each start from the grid point whose final-pruner
    perplexities on that model's calib-next and ptb/train windows (--holdout-tune-windows of each)
    have the lowest geometric mean, and keep it only if a paired test over the windows (recomputed
    here by hand from the stored per-window values) puts it more than 2 standard errors below the
    training constant (the file's 0.04 for the function, the training lambda 0.12 for ATP); no other
    text is read to choose. ATP's ramp as the function gives ATP's own grid (pruned once: 6 prunes
    for 12 grid points), and the chosen value's perplexities are a hand prune's."""
    from dsa.distributed.pool import InProcessPool
    from dsa.distributed.worker import Worker
    from dsa.protocol.grids import Choosing
    from dsa.protocol.tuning import tune_on_model
    from dsa.search.pool_measurer import PoolMeasurer
    from evaluators.perplexity import perplexity

    model = calibrated.config.model
    pool = InProcessPool({model: Worker(calibrated, "wiki/validation", 1)})
    texts = ("calib-next", "ptb/train")
    config = dataclasses.replace(tiny_run_config(tmp_path, "tune"), holdout_tune=texts, holdout_tune_windows=3,
                                 holdout_tune_z=2.0)
    # A checkpoint of an older run names one text as a string.
    assert runner.RunConfig.from_dict({**config.as_dict(), "holdout_tune": "calib-next"}).holdout_tune == ("calib-next",)
    ramp = {"format": "dsa-function", "version": 1, "importance": {"operand": "depth", "pre": [], "reduction": "mean"},
            "transform": [], "post": "noop", "map": {"kind": "dsa", "lambda": 0.04}}
    reads, prunes = [], []
    windows, prune = calibrated.windows, EvaluationSession.prune
    monkeypatch.setattr(calibrated, "windows", lambda text, count: reads.append(text) or windows(text, count))
    monkeypatch.setattr(EvaluationSession, "prune", lambda self, *a, **k: prunes.append(a[0]) or prune(self, *a, **k))
    try:
        allocations, tuning = tune_on_model(PoolMeasurer(pool, "wanda"), model, ramp, 0.7, 0.12,
                                            Choosing(config.holdout_tune, config.holdout_tune_windows),
                                            config.holdout_tune_z)
        assert set(reads) == set(texts) and len(prunes) == 6
        grids = {name: tuning[name]["grid"] for name in ("best-tuned", "atp-tuned")}
        assert [row["value"] for row in grids["best-tuned"]] == [0.04, 0.08, 0.12, 0.15, 0.2, 0.25]
        assert grids["best-tuned"] == grids["atp-tuned"]  # the same ramps, the same numbers
        label = "calib-next + ptb/train"
        for name, reference in (("best-tuned", 0.04), ("atp-tuned", 0.12)):
            grid = grids[name]
            for row in grid:
                assert row[label] == pytest.approx(math.sqrt(row["calib-next"] * row["ptb/train"]), rel=1e-12)
                for text in texts:  # 3 windows each, their log-perplexities giving the text's perplexity
                    assert len(row["window_log_ppl"][text]) == 3
                    assert math.exp(sum(row["window_log_ppl"][text]) / 3) == pytest.approx(row[text], rel=1e-12)
            lowest = min(grid, key=lambda row: math.log(row["calib-next"]) + math.log(row["ptb/train"]))
            kept = next(row for row in grid if row["value"] == reference)
            mean, variance = 0.0, 0.0
            for text in texts:
                diffs = [a - b for a, b in zip(lowest["window_log_ppl"][text], kept["window_log_ppl"][text])]
                average = sum(diffs) / 3
                mean += average / 2
                variance += sum((d - average) ** 2 for d in diffs) / 2 / 3 / 4
            z = mean / math.sqrt(variance) if variance else 0.0
            record = tuning[name]
            assert record["lowest"] == lowest["value"] and record["reference"] == reference
            assert record["z"] == pytest.approx(z, rel=1e-9, abs=1e-12)
            assert record["chosen"] == (lowest["value"] if z < -2 else reference)
            assert record["switched"] == (z < -2) and record["chosen_on"] == label
            assert record["windows"] == 3  # its own count, not the report's (1)
        assert sum(r * n for r, n in zip(allocations["best-tuned"][0], calibrated.sizes.tolist())) == pytest.approx(
            0.7 * float(calibrated.sizes.sum()), rel=1e-9)
        prune(EvaluationSession(calibrated), allocations["best-tuned"][0], "wanda")
        chosen = next(row for row in grids["best-tuned"] if row["value"] == tuning["best-tuned"]["chosen"])
        for text in texts:
            by_hand = perplexity(calibrated.loaded.model, windows(text, 3), calibrated.config.batch_size)
            assert by_hand == pytest.approx(chosen[text], rel=1e-6)
    finally:
        calibrated.pruner.restore()


def test_seeds_dsa_published_follows_dsa_code_on_model(calibrated):
    """DSA's W:(ABSLOG)-(VAR)-(ATAN,ASIN) with its map, step by step as lliai/DSA's code runs it
    (float32 on each block's concatenated Wanda scores), against the seed and its function file."""
    import math

    import numpy as np

    from dsa.functions.files import DSA_PUBLISHED

    session = EvaluationSession(calibrated)
    n = session.n_blocks
    by_hand = []
    for i in range(n):
        w = torch.cat([torch.flatten(m.float()) for m in session.block_matrices("wanda", i)])  # prune_all.py:2060
        w[w == 0] = 1                                            # autolayer.py:37, ABSLOG
        v = torch.asin(torch.atan(torch.var(torch.log(torch.abs(w))))).item()  # VAR, ATAN, ASIN
        by_hand.append(0.0 if math.isnan(v) else -1.0 if math.isinf(v) else v)  # autolayer.py:455-458
    x = np.array(by_hand)
    x = 1 - (x - x.min()) / (x.max() - x.min())                  # prune_all.py:2075-2077
    x = (x - x.min()) * (1 / (x.max() - x.min()) * 0.08 * 2)     # prune_all.py:2082-2084
    want = 1 - (x - x.mean() + (1 - 0.7))                        # prune_all.py:2086-2088, 2192
    ratios, values = function_ratios(DSA_PUBLISHED, session.block_matrices, n, calibrated.sizes, 0.7)
    assert len(set(calibrated.sizes.tolist())) == 1  # equal-sized blocks: DSA's plain mean is the budget
    assert [math.isnan(v) for v in values] == [v == 0.0 for v in by_hand]  # same blocks hit asin's nan
    assert ratios == pytest.approx(want.tolist(), abs=1e-5)      # float32 (DSA) vs float64 statistics
    search = Search(SearchConfig(), calibrated.sizes, features_on(session.block_matrices, n), evaluator=None)
    assert search.ratios_of(search.individual(seed_names("dsa-published"))) == ratios


def test_seeds_replay_as_function_files(calibrated):
    """The new seeds, written as function files, replay to the seeds' own ratios."""
    session = EvaluationSession(calibrated)
    n = session.n_blocks
    search = Search(SearchConfig(), calibrated.sizes, features_on(session.block_matrices, n), evaluator=None)
    for label in ("dsa-published", "dlp", "atp@0.08"):
        individual = search.individual(seed_names(label))
        document = json.loads(json.dumps(from_root(search.root(individual))))
        assert to_names(document) == seed_names(label)
        replayed, _ = function_ratios(document, session.block_matrices, n, calibrated.sizes, 0.7)
        assert search.ratios_of(individual) == replayed, label
    atp = torch.tensor(search.ratios_of(search.individual(seed_names("atp@0.08"))), dtype=torch.float64)
    steps = atp[1:] - atp[:-1]
    assert torch.allclose(steps, torch.full_like(steps, 0.16 / (n - 1)), rtol=0, atol=1e-12)


def test_held_out_atp_takes_the_lambda_best_over_all_training_models():
    """Two training models that prefer different lambdas (the grids measured in the leave-one-out
    rotation with SmolLM2 held out): the held-out model gets the lambda with the lowest multi-model
    score, the mean over the training models of log(ppl / ppl at the model's own choice):
    0.12 scores (ln(177.23 / 175.40) + ln(206.71 / 206.71)) / 2 = 0.00519, 0.15 scores
    (0 + ln(214.06 / 206.71)) / 2 = 0.01747; not the first model's choice."""
    from dsa.allocation.baselines import atp_grid
    from dsa.core.constants import ATP_LAMBDAS
    from dsa.protocol.atp import atp_from_training

    def choice(values, sparsity=0.7):
        grid = [{"lambda": lam, "wiki/validation": v} for lam, v in zip(ATP_LAMBDAS, values)]
        return {"grid": grid, "sparsity": sparsity, "lambda": ATP_LAMBDAS[values.index(min(values))],
                "chosen_on": "wiki/validation"}

    gemma = choice([197.58, 184.10, 177.23, 175.40, 208.26, 307.93])  # prefers 0.15
    qwen = choice([224.99, 230.35, 206.71, 214.06, 407.73, 1913.37])  # prefers 0.12
    other_sparsity = choice([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], sparsity=0.6)  # prefers 0.04, at 60 %: not read
    held = atp_from_training([gemma, qwen, other_sparsity], 0.7, 30)
    assert ATP_LAMBDAS == (0.04, 0.08, 0.12, 0.15, 0.2, 0.25)
    assert held["lambda"] == 0.12 and held["chosen_on"] == "training models"
    assert held["step"] == dict(atp_grid(30, 0.7, ATP_LAMBDAS))[0.12]
    scores = {point["lambda"]: point["score"] for point in held["grid"]}
    assert scores[0.12] == pytest.approx(0.00519, abs=1e-5) and scores[0.15] == pytest.approx(0.01747, abs=1e-5)
    assert min(scores, key=scores.get) == 0.12
    assert atp_from_training([], 0.7, 30)["lambda"] == 0.04  # no training grid: ATP's smallest lambda


def test_depth_only_search_reads_depth_alone(calibrated):
    """`operands=('depth',)`: seeds, random functions, mutations and crossovers never read a
    score or weight (the features raise if asked), and their ratios meet the budget exactly."""
    from dsa.functions.genome import OPERANDS, seed_genomes

    def depth_only(operand, index):
        raise AssertionError(f"read {operand}: a depth-only search must read depth alone")

    features = lambda node: prefix_values(node, depth_only, len(calibrated.blocks))  # noqa: E731
    search = Search(SearchConfig(operands=("depth",)), calibrated.sizes, features, evaluator=None)
    seeds = seed_genomes(operands=("depth",))
    assert list(seeds) == ["uniform", "atp@0.04", "atp@0.08", "atp@0.12", "atp@0.15", "atp@0.2", "atp@0.25"]
    assert search.ratios_of(search.individual(seeds["uniform"])) == [0.7] * len(calibrated.blocks)
    random.seed(0)
    individuals = [search.random_individual() for _ in range(100)]
    bred = []  # crossover children and mutants of the random ones
    for a, b in zip(individuals[::2], individuals[1::2]):
        bred += search.toolbox.mate(search.toolbox.clone(a), search.toolbox.clone(b))
        bred += search.mutate(search.toolbox.clone(a))
    individuals += bred
    valid = 0
    for ind in individuals:
        assert {node.name for node in ind} & set(OPERANDS) == {"depth"}
        ratios = search.ratios_of(ind)
        if ratios is not None:
            valid += 1
            r = torch.tensor(ratios, dtype=torch.float64)
            assert abs(float((r * calibrated.sizes).sum() / calibrated.sizes.sum()) - 0.7) < 1e-6
    assert valid > 50
    # A checkpoint keeps the restriction, and refuses a genome outside it.
    config = runner.RunConfig(search=SearchConfig(operands=("depth",)))
    again = runner.RunConfig.from_dict(json.loads(json.dumps(config.as_dict())))
    assert again == config and again.search.operands == ("depth",)
    with pytest.raises(ValueError, match="unknown node"):
        check_state(SearchState(population=[[seed_names("owl"), 1.0]]), again.search)
    with pytest.raises(ValueError, match="operands must be"):
        SearchConfig(operands=("depth", "rank")).allowed_operands()


def _depth_function(pre, reduction, transform, post, kind, constant):
    key = "eps" if kind == "alpha" else "lambda"
    return {"format": "dsa-function", "version": 1,
            "importance": {"operand": "depth", "pre": pre, "reduction": reduction},
            "transform": transform, "post": post, "map": {"kind": kind, key: constant}}


def test_guard_check_rejects_functions_that_read_a_guard(calibrated):
    """`guard_check`: the boundary rules the held-out-Gemma-3 searches found at 60 % (block 0 or the last
    block singled out by a log floor, DSA's log epsilon, or the rank of a 1x1 zero) are rejected as
    invalid; functions continuous in depth keep exactly the ratios they have without the check.
    Through a worker too: its features with the guards moved are computed with them moved."""
    from dsa.distributed.pool import InProcessPool
    from dsa.distributed.worker import Worker
    from dsa.functions.codec import stage_of
    from dsa.functions.pipeline import parse
    from dsa.search.evolution import Target

    n = len(calibrated.blocks)
    def depth_only(operand, index):
        raise AssertionError(f"read {operand}")
    features = features_on(depth_only, n)  # the in-process check calls it with the guards moved
    checked = Search(SearchConfig(operands=("depth",), guard_check=True), calibrated.sizes, features, evaluator=None)
    plain = Search(SearchConfig(operands=("depth",)), calibrated.sizes, features, evaluator=None)
    readers = {  # found by the 60 % held-out-Gemma-3 searches (seeds 0 and 1) and a 70 % random search
        "log|log(d + 1e-6)|": _depth_function(["dsa_log"], "mean", [], "log", "dsa", 0.04),
        "log|tanh(d)|": _depth_function([], "mean", ["tanh"], "log", "dsa", 0.15),
        "sigmoid(tanh|rank(d^2)|)": _depth_function(["square", "abs"], "rank", ["abs", "tanh"], "sigmoid", "alpha", 0.3),
    }
    for name, function in readers.items():
        ind = checked.individual(to_names(function))
        ratios = plain.ratios_of(plain.individual(to_names(function)))
        assert ratios is not None, name  # valid without the check...
        singled_out = {i for i, r in enumerate(ratios) if abs(r - statistics.median(ratios)) > 0.02}
        assert singled_out & {0, n - 1} and len(singled_out) <= 2, (name, ratios)  # ...and a boundary rule
        assert checked.ratios_of(ind) is None, name
    assert checked.state.guard_readers == 3
    rules = {"mean(tanh(d))": _depth_function(["tanh"], "mean", [], "noop", "dsa", 0.1),
             "tanh(sin(mean(tanh(d))))": _depth_function(["tanh"], "mean", ["sin"], "tanh", "dsa", 0.08)}
    for name, function in rules.items():
        ratios = checked.ratios_of(checked.individual(to_names(function)))
        assert ratios == plain.ratios_of(plain.individual(to_names(function))), name
    for name in seed_genomes(operands=("depth",)):
        assert checked.ratios_of(checked.individual(seed_genomes(operands=("depth",))[name])) is not None, name
    assert checked.state.guard_readers == 3

    # A worker computes a prefix with the guards moved when asked, and with the ops' own after.
    pool = InProcessPool({"m": Worker(calibrated, "wiki/validation", 1)})
    def reduction_node(function):
        node = parse(to_names(function), lambda name: checked.pset.mapping[name].arity)
        while stage_of(node.name) != "red":
            node = node.children[0]
        return node
    prefix = reduction_node(_depth_function([], "mean", [], "noop", "dsa", 0.1))  # mean(depth)
    log_node = reduction_node(_depth_function(["log"], "mean", [], "noop", "dsa", 0.1))  # mean(log(depth))
    assert pool.call("features", prefix, False)[:2] == [0.0, 1 / (n - 1)]
    assert pool.call("features", prefix, True)[0] == pytest.approx(1e-4, rel=1e-12)
    assert pool.call("features", log_node, False)[0] == pytest.approx(math.log(torch.finfo(torch.float32).tiny))
    assert pool.call("features", log_node, True)[0] == pytest.approx(math.log(1e-4), rel=1e-6)
    assert pool.call("features", log_node, False)[0] == pytest.approx(math.log(torch.finfo(torch.float32).tiny))
    # Multi-target searches ask the workers for the moved features through Target.moved_features.
    moved_calls = []
    target = Target("m", 0.6, calibrated.sizes, lambda node: pool.call("features", node, False), "m@0.6|",
                    lambda node: moved_calls.append(node) or pool.call("features", node, True))
    remote = Search(SearchConfig(operands=("depth",), guard_check=True), None, None, evaluator=None, targets=[target])
    assert remote.ratios_of(remote.individual(to_names(readers["log|tanh(d)|"]))) is None and moved_calls


def test_library_functions_seed_the_first_generation(calibrated, tmp_path):
    """`seed_functions`: library names and files join the baselines' seeds; each seed's ratios are
    its file's replayed ratios and its fitness the perplexity of those ratios; a file off the
    search's grid or reading an operand the search leaves out is refused in one line."""
    from dsa.core.errors import UserError
    from dsa.distributed.pool import InProcessPool
    from dsa.distributed.worker import Worker
    from dsa.functions.replay import seed_names as file_seed_names
    from dsa.search.fitness import PoolEvaluator

    pool = InProcessPool({"m": Worker(calibrated, "wiki/validation", 1)})
    session = pool.workers["m"].session
    config = SearchConfig(operands=("depth",), population=4, fitness_windows=1,
                          seed_functions=("tanh2-ramp-70", "tanh-ramp-60"))
    search = Search(config, calibrated.sizes, features_on(session.block_matrices, session.n_blocks),
                    PoolEvaluator(pool, {"m": session.tokens_per_window}, "ppl"))
    search.initialise()
    assert len(search.population) == 9  # uniform, six ATP ramps, two library functions
    for name in config.seed_functions:
        expected, _ = function_ratios(load_function(name), session.block_matrices, session.n_blocks, calibrated.sizes, 0.7)
        (ind,) = [i for i in search.population if names_of(i) == to_names(load_function(name))]
        assert search.ratios_of(ind) == pytest.approx(expected, abs=1e-12)
        assert ind.fitness.values[0] == pytest.approx(session.fitness_perplexity(expected), rel=1e-9)
    session.restore()
    again = runner.RunConfig.from_dict(json.loads(json.dumps(runner.RunConfig(search=config).as_dict())))
    assert list(again.search.seed_functions) == ["tanh2-ramp-70", "tanh-ramp-60"]
    off_grid = tmp_path / "off-grid.json"
    off_grid.write_text(json.dumps({**load_function("tanh2-ramp-70"), "map": {"kind": "dsa", "lambda": 0.13}}))
    with pytest.raises(UserError, match="not on the search's grid"):
        file_seed_names(str(off_grid), ("depth",), False)
    with pytest.raises(UserError, match="reads depth"):
        file_seed_names("tanh2-ramp-70", ("wanda",), False)
