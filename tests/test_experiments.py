"""The research scripts under experiments/: the tables they print from reports' JSON equal hand
computations (transfer_table, seed_table, atp_selection, amplitude_table, amplitude_z), the amplitude
proxies choose as computed by hand, guard_replay reruns a finished search from its loss cache, and
paired_gap pairs windows. Marked `experiment` (CI runs them; `-m "not experiment"` skips them)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from dsa.outputs.comparison import write_comparison

ROOT = Path(__file__).resolve().parents[1]
TRANSFER, AMPLITUDE, SEARCH_MODES = (ROOT / "experiments" / topic for topic in ("transfer", "amplitude", "search-modes"))

pytestmark = pytest.mark.experiment


def test_transfer_table_row_equals_a_hand_computation(tmp_path):
    final = {"best": 240.0, "uniform": 480.0, "owl": 440.0, "alphapruning": 700.0, "atp": 250.0}
    report = {"config": {"report_texts": ["wiki/test"]}, "targets": {
        "a@0.7": {"trained": True, "allocations": {}},
        "c@0.7": {"trained": False, "atp": {"lambda": 0.12},
                  "allocations": {name: {"final": {"wiki/test": v}} for name, v in final.items()}}}}
    (tmp_path / "loo-c").mkdir()
    (tmp_path / "loo-c" / "report.json").write_text(json.dumps(report))
    grid = [{"lambda": 0.08, "step": 0.01, "wiki/validation": 190.0}, {"lambda": 0.12, "step": 0.015, "wiki/validation": 200.0}]
    write_comparison(tmp_path / "own-c", "c", "wanda", {"wiki/validation": 20.0, "wiki/test": 25.0},
                     [{"sparsity": 0.7, "method": "atp", "achieved": 0.7, "wiki/validation": 190.0, "wiki/test": 230.0}],
                     {("atp", 0.7): [0.65, 0.75]}, {"0.7": {"step": 0.01, "grid": grid, "chosen_on": "wiki/validation"}})
    out = subprocess.run([sys.executable, str(TRANSFER / "transfer_table.py"), str(tmp_path / "loo-c"),
                          "--own-atp", f"c={tmp_path / 'own-c'}"], capture_output=True, text=True, check=True).stdout
    row = out.strip().splitlines()[-1]
    # 240 / 480 - 1 = -50.0 %; the strongest fixed rule is ATP (250): 240 / 250 - 1 = -4.0 %
    assert row == ("| c (70%) | a | 240.00 | 480.00 | 440.00 | 700.00 | 250.00 (lambda 0.12) | -50.0 % "
                   "| -4.0 % (atp) | 230.00 (lambda 0.08) |")


def test_transfer_table_of_amplitudes_tuned_on_the_held_out_model(tmp_path):
    final = {"best": 260.0, "uniform": 480.0, "owl": 440.0, "alphapruning": 700.0, "atp": 250.0,
             "best-tuned": 225.0, "atp-tuned": 240.0}
    tuning = {name: {"chosen": value, "chosen_on": "calib-next", "grid": []}
              for name, value in (("best-tuned", 0.08), ("atp-tuned", 0.12))}
    report = {"config": {"report_texts": ["wiki/test"]}, "targets": {
        "a@0.6": {"trained": True, "allocations": {}},
        "c@0.6": {"trained": False, "atp": {"lambda": 0.04}, "tuning": tuning,
                  "allocations": {name: {"final": {"wiki/test": v}} for name, v in final.items()}}}}
    (tmp_path / "loo-c").mkdir()
    (tmp_path / "loo-c" / "report.json").write_text(json.dumps(report))
    out = subprocess.run([sys.executable, str(TRANSFER / "transfer_table.py"), str(tmp_path / "loo-c")],
                         capture_output=True, text=True, check=True).stdout
    assert "Amplitude chosen on each held-out model's calib-next" in out
    # 225 / 480 - 1 = -53.1 %; strongest fixed rule ATP 250: -10.0 %; tuned ATP 240: -6.25 % -> -6.2 %
    assert out.strip().splitlines()[-1] == ("| c (60%) | a | 225.00 (0.08) | 240.00 (0.12) | 260.00 | 250.00 (lambda 0.04) "
                                            "| 480.00 | 440.00 | 700.00 | -53.1 % | -10.0 % (atp) | -6.2 % |")


def test_amplitude_table_picks_on_the_tuning_text_and_reports_the_test_text(tmp_path):
    texts = ("calib-next", "wiki/validation", "wiki/test")
    atp = [(0.04, 300.0, 80.0, 100.0), (0.08, 250.0, 70.0, 90.0), (0.12, 260.0, 65.0, 85.0)]
    grid = [{"lambda": lam, "step": lam / 10, **dict(zip(texts, values))} for lam, *values in atp]
    rows = [{"sparsity": 0.6, "method": m, "achieved": 0.6, "calib-next": 0.0, "wiki/validation": 0.0, "wiki/test": v}
            for m, v in (("uniform", 120.0), ("owl", 130.0), ("alphapruning", 110.0), ("atp", 90.0))]
    write_comparison(tmp_path / "cmp", "c", "wanda", {t: 20.0 for t in texts}, rows, {("uniform", 0.6): [0.6, 0.6]},
                     {"0.6": {"step": 0.008, "grid": grid, "chosen_on": "calib-next"}})
    function = [(0.04, 280.0, 75.0, 95.0), (0.08, 240.0, 68.0, 88.0), (0.12, 245.0, 60.0, 80.0)]
    report = {"tune_spread": {"file_constant": 0.04, "chosen": 0.08, "chosen_on": "calib-next",
                              "grid": [{"value": v, **dict(zip(texts, values))} for v, *values in function]}}
    (tmp_path / "fn.json").write_text(json.dumps(report))
    out = subprocess.run([sys.executable, str(AMPLITUDE / "amplitude_table.py"), "--sparsity", "0.6",
                          f"c={tmp_path / 'cmp'},{tmp_path / 'fn.json'}@0.04", f"r={tmp_path / 'cmp'}@0.12"],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()
    # Function: chosen on calib-next 0.08 (240) -> test 88; file 0.04 -> 95. ATP: training 0.04 -> 100,
    # calib-next 0.08 -> 90, validation 0.12 -> 85. 88/120 - 1 = -26.7 %; best fixed rule ATP 100 -> -12.0 %;
    # 88/90 - 1 = -2.2 %. Row r is ATP's ramp itself at training lambda 0.12 (85); its fixed best is 85.
    assert out[-2] == ("| c | 88.00 (0.08) | 95.00 (0.04) | 120.00 | 130.00 | 110.00 | 100.00 (0.04) | 90.00 (0.08) "
                       "| 85.00 (0.12) | -26.7 % | -12.0 % (atp) | -2.2 % |")
    assert out[-1] == ("| r | 90.00 (0.08) | 85.00 (0.12) | 120.00 | 130.00 | 110.00 | 85.00 (0.12) | 90.00 (0.08) "
                       "| 85.00 (0.12) | -25.0 % | +5.9 % (atp) | +0.0 % |")


def test_seed_table_means_and_spreads_equal_a_hand_computation(tmp_path):
    runs = {"fn-0": (None, False, 170.0, 230.0, 260.0), "fn-1": (None, False, 180.0, 250.0, 280.0),
            "pb-0": ("per-block", False, 150.0, 300.0, 330.0)}
    folders = []
    for name, (mode, random_search, fitness, validation, test) in runs.items():
        report = {"config": {"search": {"mode": mode, "random_search": random_search, "seed": int(name[-1])},
                             "report_texts": ["wiki/test"], "fitness_text": "wiki/validation"},
                  "best": {"val_ppl": fitness}, "evaluations": 60, "windows_evaluated": 200, "wall_s": 190.0,
                  "targets": {"smollm2-135m@0.7": {"allocations": {
                      "best": {"final": {"wiki/validation": validation, "wiki/test": test}},
                      "uniform": {"final": {"wiki/validation": 600.0, "wiki/test": 680.0}}}}}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report))
        folders.append(str(tmp_path / name))
    out = subprocess.run([sys.executable, str(SEARCH_MODES / "seed_table.py"), *folders],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    # fn: mean 175 / 240 / 270, population sd 5 / 10 / 10
    assert "| function (evolution) | 2 | 175.00 ± 5.00 (170.00-180.00) | 240.00 ± 10.00 (230.00-250.00) " \
           "| 270.00 ± 10.00 (260.00-280.00) | 60 |" in out
    assert "| per-block | 1 | 150.00 ± 0.00 (150.00-150.00) | 300.00 ± 0.00 (300.00-300.00) " \
           "| 330.00 ± 0.00 (330.00-330.00) | 60 |" in out
    assert out[-1] == "uniform on wiki/test (final pruner), as each report measured it: 680.00"


def test_seed_table_of_a_held_out_target_uses_the_multi_model_score(tmp_path):
    folders = []
    for name, random_search, score, test in (("evo-0", False, -0.274, 117.0), ("evo-1", False, -0.272, 97.0),
                                             ("rnd-0", True, -0.270, 99.0)):
        final = {"best": {"final": {"wiki/validation": test - 20, "wiki/test": test}},
                 "uniform": {"final": {"wiki/validation": 83.0, "wiki/test": 104.0}}}
        report = {"config": {"search": {"mode": "function", "random_search": random_search, "seed": int(name[-1])},
                             "report_texts": ["wiki/test"], "fitness_text": "wiki/validation"},
                  "best": {"val_ppl": 87.0}, "history": [{"best": 0.0}, {"best": score}], "evaluations": 50,
                  "windows_evaluated": 120, "wall_s": 600.0,
                  "targets": {"a@0.6": {"trained": True, "allocations": {}}, "b@0.6": {"trained": True, "allocations": {}},
                              "c@0.6": {"trained": False, "allocations": final}}}
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report))
        folders.append(str(tmp_path / name))
    script = [sys.executable, str(SEARCH_MODES / "seed_table.py"), *folders]
    out = subprocess.run(script + ["--target", "c@0.6"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert "| evo-1 | function (evolution) | 1 | -0.272 | 77.00 | 97.00 | 50 | 120 | 600 |" in out
    # evolution: scores -0.274, -0.272 -> mean -0.273, sd 0.001; tests 117, 97 -> mean 107, sd 10
    assert "| function (evolution) | 2 | -0.273 ± 0.001 (-0.274 to -0.272) | 87.00 ± 10.00 (77.00-97.00) " \
           "| 107.00 ± 10.00 (97.00-117.00) | 50 |" in out
    missing = subprocess.run(script + ["--target", "d@0.6"], capture_output=True, text=True)
    assert missing.returncode != 0 and "has no target d@0.6" in missing.stderr


def test_atp_selection_rules_equal_a_hand_computation(tmp_path):
    # Validation perplexity per lambda; uniform is 100 on a and b, 50 on c.
    grids = {"a": {0.04: 90.0, 0.08: 80.0}, "b": {0.04: 95.0, 0.08: 104.0}, "c": {0.04: 40.0, 0.08: 45.0}}
    uniform = {"a": 100.0, "b": 100.0, "c": 50.0}
    specs = []
    for model, grid in grids.items():
        folder = tmp_path / f"own-{model}"
        folder.mkdir()
        points = [{"lambda": lam, "step": lam / 10, "wiki/validation": v} for lam, v in grid.items()]
        (folder / "atp.json").write_text(json.dumps({"0.6": {"step": 0.0, "grid": points, "chosen_on": "wiki/validation"}}))
        specs.append(f"{model}={folder}")
    report = {"config": {"fitness_text": "wiki/validation"}, "targets": {
        f"{m}@0.6": {"allocations": {"uniform": {"final": {"wiki/validation": u}}}} for m, u in uniform.items()}}
    (tmp_path / "loo").mkdir()
    (tmp_path / "loo" / "report.json").write_text(json.dumps(report))
    out = subprocess.run([sys.executable, str(TRANSFER / "atp_selection.py"), str(tmp_path / "loo"),
                          "--own-atp", *specs], capture_output=True, text=True, check=True).stdout.splitlines()
    # c held out, trained on a, b. Log ratios: 0.04 -> (-0.105, -0.051), 0.08 -> (-0.223, +0.039).
    # Mean: 0.04 -0.078, 0.08 -0.092 -> 0.08. Worst: 0.04 -0.051, 0.08 +0.039 -> 0.04.
    assert out[-1] == "| c | a, b | 0.08 | 0.04 | 45.00 | 40.00 | 40.00 (0.04) | 50.00 |"


def test_amplitude_proxies_choose_as_a_hand_computation():
    sys.path.insert(0, str(AMPLITUDE))
    from amplitude_proxy import proxy_choices

    # Two constants, 10 tokens per window. On calib-next's first 4 windows 0.08 is lower (sum 40 vs
    # 44); over all 8, 0.12 is (88 vs 80). KL prefers 0.12, the report text 0.12: ppl exp(50 / 20).
    rows = [{"value": 0.08, "calib-next nll": [10.0] * 4 + [12.0] * 4, "calib-next kl": [3.0, 3.0],
             "report nll": [30.0, 30.0]},
            {"value": 0.12, "calib-next nll": [11.0] * 4 + [9.0] * 4, "calib-next kl": [2.0, 2.5],
             "report nll": [25.0, 25.0]}]
    choices = proxy_choices(rows, 10, "wiki/test")
    assert list(choices) == ["calib-next ppl, 4 windows", "calib-next ppl, 8 windows", "calib-next KL, 2 windows",
                             "wiki/test itself (reference)"]
    assert choices["calib-next ppl, 4 windows"] == {"value": 0.08, "wiki/test": pytest.approx(math.exp(3.0))}
    assert choices["calib-next ppl, 8 windows"]["value"] == 0.12
    assert choices["calib-next KL, 2 windows"]["value"] == 0.12
    assert choices["wiki/test itself (reference)"]["wiki/test"] == pytest.approx(math.exp(2.5))
    # A second text: ptb/train alone prefers 0.08 (mean NLL 10 vs 10.5); with calib-next's means
    # (11 vs 10) the geometric mean of the two perplexities prefers 0.12 (21 vs 20.5 in log terms).
    rows[0]["ptb/train nll"], rows[1]["ptb/train nll"] = [10.0, 10.0], [10.5, 10.5]
    both = proxy_choices(rows, 10, "wiki/test", ("calib-next", "ptb/train"))
    assert both["ptb/train ppl, 2 windows"]["value"] == 0.08
    assert both["mean log-ppl of calib-next + ptb/train"]["value"] == 0.12


def test_amplitude_z_keeps_the_training_constant_as_a_hand_computation(tmp_path):
    # 10 tokens per window, one choosing text. 0.08 is lower than the training constant 0.12 on every
    # window: differences -0.1, -0.3 in log-ppl, mean -0.2, standard error 0.1 (sd 0.1414 / sqrt 2): z = -2.
    # The report text prefers 0.12 (exp(2.5) against exp(3)).
    rows = [{"value": 0.08, "calib-next nll": [9.0, 7.0], "report nll": [30.0, 30.0]},
            {"value": 0.12, "calib-next nll": [10.0, 10.0], "report nll": [25.0, 25.0]}]
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"model": "m", "sparsity": 0.7, "function": None, "tokens_per_window": 10, "rows": rows}))

    def table(z):
        return subprocess.run([sys.executable, str(AMPLITUDE / "amplitude_z.py"), f"{path}@0.12", "--z", z,
                               "--texts", "calib-next"], capture_output=True, text=True, check=True).stdout.splitlines()[-1]

    e25, e3 = f"{math.exp(2.5):.2f}", f"{math.exp(3.0):.2f}"
    assert table("1.9") == f"| m 70 % | 0.12: {e25} | 0.08: {e3} | -2.00 | **0.08: {e3}** (+64.9 % vs oracle) | 0.12: {e25} |"
    assert table("2.1") == f"| m 70 % | 0.12: {e25} | 0.08: {e3} | -2.00 | **0.12: {e25}** (oracle) | 0.12: {e25} |"


def test_amplitude_z_on_a_search_report_recomputes_the_rule(tmp_path):
    # A held-out table as search.py --holdout-tune writes it, the plain lowest chosen (0.08). Window
    # differences of 0.08 against the reference 0.12: -0.1, -0.3 -> mean -0.2, standard error 0.1, z = -2.
    grid = [{"value": 0.08, "window_log_ppl": {"calib-next": [0.9, 0.7]}},
            {"value": 0.12, "window_log_ppl": {"calib-next": [1.0, 1.0]}}]
    tuning = {"chosen": 0.08, "chosen_on": "calib-next", "windows": 2, "grid": grid, "rule": "lowest"}
    final = {"best": 200.0, "best-tuned": 260.0, "atp": 230.0, "atp-tuned": 300.0}
    report = {"config": {"report_texts": ["wiki/test"]},
              "best": {"function": {"map": {"kind": "dsa", "lambda": 0.12}}},
              "targets": {"c@0.7": {"model": "c", "sparsity": 0.7, "trained": False, "atp": {"lambda": 0.12},
                                    "allocations": {k: {"final": {"wiki/test": v}} for k, v in final.items()},
                                    "tuning": {"best-tuned": tuning, "atp-tuned": tuning}}}}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))

    def rows(z):
        return subprocess.run([sys.executable, str(AMPLITUDE / "amplitude_z.py"), str(path), "--z", z],
                              capture_output=True, text=True, check=True).stdout.splitlines()[2:]

    assert rows("1.9") == ["| c 70 % (function) | 0.12: 200.00 | 0.08: 260.00 | -2.00 | **0.08: 260.00** | - |",
                           "| c 70 % (ATP) | 0.12: 230.00 | 0.08: 300.00 | -2.00 | **0.08: 300.00** | - |"]
    assert rows("2.1") == ["| c 70 % (function) | 0.12: 200.00 | 0.08: 260.00 | -2.00 | **0.12: 200.00** | - |",
                           "| c 70 % (ATP) | 0.12: 230.00 | 0.08: 300.00 | -2.00 | **0.12: 230.00** | - |"]


def test_guard_replay_reproduces_a_search_from_its_cache(calibrated, tmp_path):
    """guard_replay.py: rerun without the check, a depth-only search's checkpoint gives back its
    own trajectory from the loss cache alone (no pruning); with the check, it reports what it rejected."""
    sys.path.insert(0, str(TRANSFER))
    from guard_replay import replay
    from dsa.search import runner
    from dsa.search.evolution import SearchConfig
    from conftest import TEST_CONFIG

    search = SearchConfig(population=4, offspring=6, promote=2, generations=3, fitness_windows=2, screen_windows=1,
                          seed=5, operands=("depth",))
    config = runner.RunConfig(name="depth", model_config=TEST_CONFIG, search=search, results_dir=str(tmp_path / "results"),
                              checkpoint_dir=str(tmp_path / "checkpoints"))
    assert runner.run(config, calibrated=calibrated, stop_after=2) is None
    same = replay(tmp_path / "checkpoints" / "depth", guard_check=False)
    assert same == {"run": str(tmp_path / "checkpoints" / "depth"), "guard_readers": 0, "diverged": None,
                    "generations": 2, "same_best": True, "same_history": True}
    checked = replay(tmp_path / "checkpoints" / "depth")
    if checked["guard_readers"] == 0:  # the check rejected nothing: the very same search
        assert checked == same
    else:  # it rejected something: either the trajectory changed, or it ran on through cached allocations
        assert (checked["diverged"] is None) == (checked["generations"] == 2)


def test_paired_gap_pairs_windows_and_replays_atp_at_a_lambda(session):
    sys.path.insert(0, str(TRANSFER))
    import paired_gap
    ramp = {"format": "dsa-function", "version": 1, "importance": {"operand": "depth", "pre": [], "reduction": "mean"},
            "transform": [], "post": "noop", "map": {"kind": "dsa", "lambda": 0.12}}
    # atp:0.12 is the search's ATP at spread 0.12: the depth ramp `mean(depth)` with a DSA map at 0.12
    ramp_ratios = paired_gap.function_ratios(ramp, session.block_matrices, session.n_blocks, session.sizes, 0.6)[0]
    assert paired_gap.allocation("atp:0.12", session, 0.6) == pytest.approx(ramp_ratios, abs=1e-12)
    with pytest.raises(paired_gap.UserError, match="not legal"):
        paired_gap.allocation("atp:0.5", session, 0.6)
    # the paired test by hand: differences -0.1, -0.3 -> mean -0.2, standard error 0.1, z -2
    row, = paired_gap.gap_rows([1.0, 2.0], {"uniform": [1.1, 2.3]}, "wiki/test")
    assert row["difference"] == pytest.approx(-0.2) and row["z"] == pytest.approx(-2.0)
    assert row["ratio"] == pytest.approx(math.exp(-0.2) - 1) and row["windows_lower"] == 2
    assert row["perplexity"] == pytest.approx(math.exp(1.7))
    # real prunes, two windows: the ramp at 60 % against uniform, and the model is dense afterwards
    dense = session.window_log_perplexities(["wiki/test"], 2)["wiki/test"]
    logppl = paired_gap.measure(session, ramp, ["uniform"], 0.6, "wanda", "wiki/test", 2)
    assert session.window_log_perplexities(["wiki/test"], 2)["wiki/test"] == dense
    assert all(len(v) == 2 for v in logppl.values())
    assert all(math.log(20) < v < math.log(400) for values in logppl.values() for v in values), logppl
    assert logppl["function"] != logppl["uniform"]


def test_paired_gap_checks_its_baselines_before_loading_a_model():
    out = subprocess.run([sys.executable, str(TRANSFER / "paired_gap.py"), "--function", "missing.json",
                          "--against", "atp"], capture_output=True, text=True)
    assert out.returncode == 2 and "atp:LAMBDA" in out.stderr
    out = subprocess.run([sys.executable, str(TRANSFER / "paired_gap.py"), "--function", "missing.json",
                          "--against", "atp:0.12", "uniform"], capture_output=True, text=True)
    assert out.returncode == 1 and "missing file: missing.json" in out.stderr


def test_matrix_gap_measures_a_block_rule_the_same_at_both_granularities(dense_calibrated):
    """experiments/granularity/matrix_gap.py: uniform gives every matrix its block's ratio, so its
    two forms prune the same weights and the paired gap is exactly zero."""
    sys.path.insert(0, str(ROOT / "experiments" / "granularity"))
    import matrix_gap
    from evaluators.session import EvaluationSession

    row = matrix_gap.measure(EvaluationSession(dense_calibrated), "uniform", 0.7, "wanda", "wiki/test", 2)
    assert row["block_ppl"] == row["matrix_ppl"] and 100 < row["block_ppl"] < 5000
    assert row["difference"] == 0.0 and row["z"] == 0.0 and row["windows_lower"] == 0
