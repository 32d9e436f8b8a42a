"""Nothing a user wrote is lost when a name is reused, and hostile inputs are refused in one line.

Each test writes what a user could have there (an earlier run, notes, a damaged or hand-edited
file), runs the command as a user would (the CLIs' main in-process: the exit code and stderr are
what a shell sees) and checks that every such file is still byte for byte what it was, that a
refusal is exit code 2 with one line and no traceback, and that outputs keep the umask's modes.
The runs that need a model use the shared session calibrated model (tests/conftest.py).
"""
import copy
import json
import os
import stat
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import apply
import search
from dsa.core.errors import UserError
from dsa.core.paths import check_new_output_dir, check_output_dir
from dsa.core.storage import atomic_write_text, staged_directory
from dsa.outputs.export import SAVE_MARKER, check_save_dir, interrupted_saves
from dsa.search import checkpoint
from dsa.search.evolution import SearchState
from dsa.search.runner import RunConfig
from evaluators.session import EvaluationSession

DEPTH_RAMP = {"format": "dsa-function", "version": 1,
              "importance": {"operand": "depth", "pre": [], "reduction": "mean"},
              "transform": [], "post": "noop", "map": {"kind": "dsa", "lambda": 0.04}}


def snapshot(root: Path) -> dict:
    """Every file under `root` (hidden ones too): its bytes and mode; and every directory's mode."""
    files = {}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        files[str(path.relative_to(root))] = (path.read_bytes() if path.is_file() else None, mode)
    return files


def refused(capsys, main, *argv) -> str:
    """Run a CLI's main; it must refuse with exit code 2 and exactly one line on stderr (besides
    the progress bars of the work done before a refusal that needs it, as LoRA's checkpoint)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line and "it/s]" not in line]
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def run_main(capsys, main, *argv) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


@pytest.fixture
def no_model(monkeypatch):
    """A refusal must come before any model loads or any search starts."""
    monkeypatch.setattr(apply, "_session", lambda args: pytest.fail("a model was loaded"))
    monkeypatch.setattr(search, "run", lambda *a, **k: pytest.fail("the search started"))


@pytest.fixture
def on_bench(monkeypatch, dense_calibrated):
    """apply.py on the shared calibrated model (one model load for the suite), dense again afterwards."""
    monkeypatch.setattr(apply, "_session", lambda args: EvaluationSession(dense_calibrated))
    return dense_calibrated


# ---------------------------------------------------------------- rows 1 and 2: a run name is a run
def earlier_run(tmp_path: Path, name: str = "base") -> tuple[Path, Path]:
    """What a finished search leaves: its checkpoint and its report (checkpoints/, results/)."""
    ckpt, results = tmp_path / "checkpoints", tmp_path / "results"
    (ckpt / name).mkdir(parents=True)
    (ckpt / name / "state.json").write_text(json.dumps({"run": RunConfig(name=name).as_dict(),
                                                        "state": asdict(SearchState(generation=1))}))
    (ckpt / name / ".lock").write_text("123")
    (results / name).mkdir(parents=True)
    (results / name / "best.json").write_text(json.dumps(DEPTH_RAMP))
    (results / name / "report.md").write_text("the first run's report\n")
    return ckpt, results


@pytest.mark.parametrize("mode", [[], ["--mode", "per-block"]])
def test_a_fresh_search_under_an_existing_name_is_refused(capsys, tmp_path, no_model, mode):
    ckpt, results = earlier_run(tmp_path)
    before = snapshot(tmp_path)
    line = refused(capsys, search.main, "--name", "base", "--workers", "0", "--checkpoint-dir", str(ckpt),
                   "--results-dir", str(results), *mode)
    assert f"--resume {ckpt / 'base'}" in line and "new --name" in line
    assert snapshot(tmp_path) == before


def test_results_of_an_earlier_run_alone_also_hold_the_name(capsys, tmp_path, no_model):
    """Its checkpoint deleted, the report still names the run: a new search would write its
    report beside the old best.json, which apply.py --function would then replay."""
    ckpt, results = earlier_run(tmp_path)
    (ckpt / "base" / "state.json").unlink()
    before = snapshot(tmp_path)
    line = refused(capsys, search.main, "--name", "base", "--workers", "0", "--checkpoint-dir", str(ckpt),
                   "--results-dir", str(results))
    assert str(results / "base") in line and "new --name" in line
    assert snapshot(tmp_path) == before


def test_a_run_killed_before_its_first_checkpoint_may_start_again(tmp_path):
    """Only its lock file is left (no state.json, no results): there is nothing to resume."""
    (tmp_path / "checkpoints" / "base").mkdir(parents=True)
    (tmp_path / "checkpoints" / "base" / ".lock").write_text("123")
    checkpoint.check_new_run("base", tmp_path / "checkpoints", tmp_path / "results")
    (tmp_path / "results" / "base").mkdir(parents=True)  # an empty results folder holds no report
    checkpoint.check_new_run("base", tmp_path / "checkpoints", tmp_path / "results")
    assert not (tmp_path / "results" / "base" / "best.json").exists()


def test_resume_is_not_refused_by_its_own_name(capsys, tmp_path, monkeypatch):
    ckpt, results = earlier_run(tmp_path)

    class Started(Exception):
        pass

    def started(config, state, **kwargs):
        assert config.name == "base" and state.generation == 1
        raise Started

    monkeypatch.setattr(search, "run", started)
    with pytest.raises(Started):
        search.main(["--resume", str(ckpt / "base"), "--workers", "0"])


def test_a_checkpoint_written_before_model_config_was_named_resumes(capsys, tmp_path, monkeypatch):
    """Checkpoints before 2026-12-06 hold the model settings under "bench"."""
    ckpt, _ = earlier_run(tmp_path)
    path = ckpt / "base" / "state.json"
    document = json.loads(path.read_text())
    document["run"]["bench"] = document["run"].pop("model_config")
    path.write_text(json.dumps(document))
    seen = []
    monkeypatch.setattr(search, "run", lambda config, state, **kwargs: seen.append(config.model_config.seqlen))
    monkeypatch.setattr(search, "print_summary", lambda config, report: None)
    search.main(["--resume", str(ckpt / "base"), "--workers", "0"])
    assert seen == [document["run"]["bench"]["seqlen"]]


# ---------------------------------------------------------------- numbers in a checkpoint (--resume)
@pytest.mark.parametrize("where, value, message", [
    (("run", "report_windows"), 10 ** 400, "run.report_windows must be an integer"),
    (("run", "report_windows"), True, "run.report_windows must be an integer"),
    (("run", "model_config", "seqlen"), "128", "run.model_config.seqlen must be an integer"),
    (("run", "model_config", "seqlen"), 0, "run.model_config.seqlen must be an integer >= 1"),
    (("run", "search", "level_step"), "0.01", "run.search.level_step must be a finite number"),
    (("run", "holdout_tune_z"), -1, "run.holdout_tune_z must be a finite number >= 0"),
    (("run", "report_texts"), [True], "run.report_texts must be a list"),
    (("state", "wall_s"), 10 ** 400, "state.wall_s must be a finite number"),
    (("state", "generation"), True, "state.generation must be an integer"),
    (("state", "population"), {}, "state.population must be a JSON array"),
])
def test_resume_checks_every_number_of_the_checkpoint(capsys, tmp_path, no_model, where, value, message):
    ckpt, _ = earlier_run(tmp_path)
    path = ckpt / "base" / "state.json"
    document = json.loads(path.read_text())
    part = document
    for key in where[:-1]:
        part = part[key]
    part[where[-1]] = value
    path.write_text(json.dumps(document))
    before = snapshot(tmp_path)
    line = refused(capsys, search.main, "--resume", str(ckpt / "base"), "--workers", "0")
    assert "does not hold a valid checkpoint" in line and message in line
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- row 3: --save's marker
@pytest.mark.parametrize("marker", ['{"files": "notes"}', '{"files": ["../n"]}', '{"files": ["sub/n"]}',
                                    '{"files": [".."]}', '{"files": [1]}', '{"files": {"n": 1}}', '["n"]',
                                    '"files"', '{"files": null}', "[" * 100000, "not json"])
def test_save_trusts_a_marker_only_in_the_shape_a_save_writes(capsys, tmp_path, no_model, marker):
    target = tmp_path / "d"
    target.mkdir()
    target.chmod(0o755)
    (target / "n").write_text("keep\n")
    (target / SAVE_MARKER).write_text(marker)
    before = snapshot(tmp_path)
    line = refused(capsys, apply.main, "run", "--allocation", "uniform", "--save", str(target))
    assert f"its {SAVE_MARKER} does not list the files it wrote" in line
    assert snapshot(tmp_path) == before  # the user's n, the marker and the 755 mode


def test_a_marker_listing_the_files_is_an_earlier_save(tmp_path):
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / SAVE_MARKER).write_text('{"files": ["model.safetensors", "config.json"]}')
    (earlier / "model.safetensors").write_text("x")
    assert check_save_dir(earlier) == earlier
    (earlier / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds files dsa did not write \(notes.txt\)"):
        check_save_dir(earlier)


def test_save_after_a_killed_save_keeps_modes_and_leftovers(capsys, tmp_path, on_bench):
    """kill -9 during `apply.py run --save d` leaves a staging directory beside d (a part of the
    model written) and d as it was, or, between the two renames, no d and the old save aside.
    Run again, the save completes; what the killed one left is named on stderr, not deleted
    (the staging names are the tool's own, but a user may have kept one), and d's mode, which
    the user chose, is kept; the files get the umask's mode."""
    target = tmp_path / "d"
    target.mkdir()
    target.chmod(0o750)
    leftover = tmp_path / ".d.k1ll3d.tmp"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"\x00" * 1000)  # cut off by the kill
    (tmp_path / "notes.txt").write_text("mine")
    kept = {k: v for k, v in snapshot(tmp_path).items() if k != "d"}
    code, out, err = run_main(capsys, apply.main, "run", "--allocation", "uniform", "--sparsity", "0.5",
                              "--wanda-form", "cached", "--eval", "wiki/test", "--eval-windows", "1",
                              "--save", str(target))
    assert code == 0, err
    assert f"{leftover.name}" in err and "interrupted save" in err
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("d")} == kept
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    listed = json.loads((target / SAVE_MARKER).read_text())["files"]
    assert "model.safetensors" in listed and sorted(listed + [SAVE_MARKER]) == sorted(p.name for p in target.iterdir())
    assert {stat.S_IMODE(p.stat().st_mode) for p in target.iterdir()} == {0o644}
    # Saving again replaces the earlier save (all of its files are listed) and keeps the mode.
    code, _, err = run_main(capsys, apply.main, "run", "--allocation", "uniform", "--sparsity", "0.5",
                            "--wanda-form", "cached", "--eval", "wiki/test", "--eval-windows", "1",
                            "--save", str(target))
    assert code == 0, err
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    assert interrupted_saves(target) == [leftover]


# ---------------------------------------------------------------- row 4: numbers in function files
@pytest.mark.parametrize("raw, message", [
    ("1" + "0" * 400, "map constant 1000"), ("-1" + "0" * 400, "map constant -1000"),
    ("true", "map constant must be a number, not True"), ('"0.04"', "map constant must be a number, not '0.04'"),
    ("1e400", "map constant must be a finite number"), ("NaN", "map constant must be a finite number"),
])
@pytest.mark.parametrize("command", ["show", "diff"])
def test_function_file_numbers_checked_before_arithmetic(capsys, tmp_path, no_model, raw, message, command):
    path = tmp_path / "best.json"
    path.write_text(json.dumps(DEPTH_RAMP).replace('"lambda": 0.04', f'"lambda": {raw}'))
    before = snapshot(tmp_path)
    line = refused(capsys, apply.main, command, str(path), *([str(path)] if command == "diff" else []))
    assert f"{path}: invalid function: {message}" in line
    assert snapshot(tmp_path) == before


def test_function_file_version_is_a_plain_integer(capsys, tmp_path, no_model):
    for version in ("1" + "0" * 400, "true", '"1"', "1.0"):
        path = tmp_path / "best.json"
        path.write_text(json.dumps(DEPTH_RAMP).replace('"version": 1', f'"version": {version}'))
        assert "unsupported version" in refused(capsys, apply.main, "show", str(path))


# ---------------------------------------------------------------- row 5: diff --tolerance
@pytest.mark.parametrize("tolerance", ["nan", "-1", "inf", "-inf"])
def test_diff_tolerance_must_be_finite_and_not_negative(capsys, tmp_path, no_model, tolerance):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(DEPTH_RAMP))
    line = refused(capsys, apply.main, "diff", str(path), str(path), "--model", "smollm2-135m",
                   f"--tolerance={tolerance}")
    assert "--tolerance" in line and "finite number >= 0" in line


def test_a_file_is_the_same_as_itself_at_tolerance_zero(capsys, tmp_path, on_bench):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(DEPTH_RAMP))
    code, out, err = run_main(capsys, apply.main, "diff", str(path), str(path), "--model", "smollm2-135m",
                              "--tolerance", "0")
    assert code == 0, err
    assert "same ratios on smollm2-135m at 0.7: yes (largest difference 0 at block 0, tolerance 0)" in out


# ---------------------------------------------------------------- row 6: check, then create
@pytest.mark.parametrize("argv", [
    ("compare", "--seqlen", "0"), ("compare", "--seqlen", "0", "--out", "new/deep/table"),
    ("run", "--seqlen", "0", "--json", "new/deep/report.json"), ("run", "--seqlen", "0", "--save", "new/deep/model"),
    ("run", "--seqlen", "0", "--export-llmcompressor", "new/deep/recipe.yaml"),
])
def test_a_refused_setting_leaves_no_directory_behind(capsys, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    line = refused(capsys, apply.main, *argv, "--allocation" + ("s" if argv[0] == "compare" else ""), "uniform")
    assert "--seqlen must be >= 2" in line
    assert snapshot(tmp_path) == before  # no results/compare-..., no new/


def test_compare_refuses_an_earlier_tables_directory(capsys, tmp_path, monkeypatch, no_model):
    monkeypatch.chdir(tmp_path)
    default = tmp_path / "results" / "compare-smollm2-135m-wanda"
    default.mkdir(parents=True)
    (default / "table.md").write_text("the earlier table")
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    for out in ([], ["--out", str(other)]):
        line = refused(capsys, apply.main, "compare", "--allocations", "uniform", *out)
        assert "exists and is not empty" in line and "choose a new --out" in line
    assert snapshot(tmp_path) == before


def test_checking_an_output_creates_nothing(tmp_path):
    (tmp_path / "afile").write_text("x")
    assert check_output_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert check_new_output_dir(tmp_path / "c", "--out", "x") == tmp_path / "c"
    with pytest.raises(UserError, match="afile is not a directory"):
        check_output_dir(tmp_path / "afile" / "sub", "--out")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="a link to nothing"):
        check_output_dir(tmp_path / "dangling", "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "dangling"]


# ---------------------------------------------------------------- row 7: the umask's modes
@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_written_files_and_new_save_directories_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.json", "{}")
        atomic_write_text(tmp_path / "report.json", "{}")  # replacing too
        with staged_directory(tmp_path / "new") as staging:
            (staging / "a").write_text("x")
        (tmp_path / "plain.txt").write_text("as plots and CSVs are written")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "new" / "a").stat().st_mode) == file_mode


@pytest.mark.parametrize("mode", [0o750, 0o2775, 0o555])
def test_a_replaced_directory_keeps_the_mode_its_owner_gave_it(tmp_path, mode):
    target = tmp_path / "d"
    target.mkdir()
    (target / "old").write_text("x")
    target.chmod(mode)
    with staged_directory(target) as staging:
        (staging / "new").write_text("y")
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert [p.name for p in target.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
    target.chmod(0o755)


# ---------------------------------------------------------------- LoRA: kill -9, errors in one line
@pytest.fixture
def pruned_copy(dense_calibrated):
    """A copy of the model pruned at 70 % in every block (the shared model is dense again)."""
    pytest.importorskip("peft")
    dense_calibrated.pruner.prune([0.7] * len(dense_calibrated.blocks))
    model = copy.deepcopy(dense_calibrated.loaded.model)
    dense_calibrated.pruner.restore()
    return model


LORA = dict(lr=1e-3, batch_size=1, target=["q_proj", "v_proj"], seed=3, progress=False)


def test_lora_killed_while_writing_a_checkpoint_resumes_to_the_same_weights(calibrated, pruned_copy, tmp_path):
    """kill -9 during a checkpoint write leaves the previous checkpoint whole and a cut temporary
    file beside it (atomic_write); the re-run resumes from the whole one to the weights of an
    uninterrupted run, and the checkpoint file gets the umask's mode."""
    from evaluators.lora import CHECKPOINT_NAME, finetune_lora

    windows = calibrated.calib[:2, :32]
    straight = copy.deepcopy(pruned_copy)
    reference = finetune_lora(straight, windows, 4, **LORA)

    class Killed(Exception):
        pass

    def kill_at_3(step, loss):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        finetune_lora(pruned_copy, windows, 4, checkpoint_dir=tmp_path, checkpoint_every=2, on_step=kill_at_3, **LORA)
    cut = tmp_path / f".{CHECKPOINT_NAME}.k1ll3d.tmp"  # what the kill left of the step-4 write
    cut.write_bytes((tmp_path / CHECKPOINT_NAME).read_bytes()[:5000])
    resumed = finetune_lora(pruned_copy, windows, 4, checkpoint_dir=tmp_path, checkpoint_every=2, **LORA)
    assert resumed["resumed_from"] == 2 and resumed["losses"] == reference["losses"]
    expected = straight.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in pruned_copy.state_dict().items())
    assert stat.S_IMODE((tmp_path / CHECKPOINT_NAME).stat().st_mode) == 0o644


def _rewrite_meta(path: Path, change) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["dsa_lora"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    change(meta)
    save_file(tensors, str(path), metadata={"dsa_lora": json.dumps(meta)})


CHANGES = [  # a hand-edited checkpoint's metadata, and what the refusal says
    (lambda m: m.update(step=True), "not a LoRA checkpoint"), (lambda m: m.update(step=10 ** 400), "not a LoRA checkpoint"),
    (lambda m: m.update(step="2"), "not a LoRA checkpoint"), (lambda m: m["losses"].append("1.5"), "not a LoRA checkpoint"),
    (lambda m: m["seconds"].__setitem__(0, 1e400), "not a LoRA checkpoint"), (lambda m: m.update(step=1), "inconsistent"),
    (lambda m: m.update(settings=[]), "not a LoRA checkpoint"), (lambda m: m.update(step=-1), "inconsistent"),
]


def test_lora_checkpoint_numbers_checked(calibrated, pruned_copy, tmp_path):
    from evaluators.lora import CHECKPOINT_NAME, LoraError, finetune_lora

    windows = calibrated.calib[:2, :32]
    start = {k: v.clone() for k, v in pruned_copy.state_dict().items()}
    finetune_lora(copy.deepcopy(pruned_copy), windows, 2, checkpoint_dir=tmp_path, **LORA)
    path = tmp_path / CHECKPOINT_NAME
    whole = path.read_bytes()
    for change, message in CHANGES:
        path.write_bytes(whole)
        _rewrite_meta(path, change)
        with pytest.raises(LoraError, match=message) as info:
            finetune_lora(pruned_copy, windows, 2, checkpoint_dir=tmp_path, **LORA)
        assert isinstance(info.value, UserError) and "\n" not in str(info.value)
        assert all(torch.equal(v, start[k]) for k, v in pruned_copy.state_dict().items())
    path.write_bytes(whole[:3000])  # damaged on disk (a copy cut short)
    with pytest.raises(LoraError, match="cannot be read"):
        finetune_lora(pruned_copy, windows, 2, checkpoint_dir=tmp_path, **LORA)


def test_lora_errors_reach_the_user_as_one_line(capsys, tmp_path, on_bench):
    """Fewer steps than the checkpoint holds, changed settings on resume: exit 2 and one line
    each (was a ValueError traceback); the checkpoint is kept as it was."""
    pytest.importorskip("peft")
    lora_dir = tmp_path / "lora"
    common = ("run", "--allocation", "uniform", "--sparsity", "0.5", "--wanda-form", "cached", "--eval", "wiki/test",
              "--eval-windows", "1", "--lora-windows", "2", "--lora-batch-size", "1",
              "--lora-checkpoint", str(lora_dir))
    code, out, err = run_main(capsys, apply.main, *common, "--finetune-lora", "2")
    assert code == 0, err
    before = snapshot(tmp_path)
    line = refused(capsys, apply.main, *common, "--finetune-lora", "1")
    assert "is at step 2, beyond the 1 steps asked for" in line
    line = refused(capsys, apply.main, *common, "--finetune-lora", "2", "--lora-rank", "4")
    assert "holds a run with other settings (rank differ)" in line
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- sparsity at the ends on `run`
def test_sparsity_at_the_ends_of_the_range(capsys, tmp_path, on_bench):
    """0.0 is refused by the option (exit 2, the usage and one error line); 0.999 prunes all but
    0.1 % and measures a finite, far worse perplexity than 0.5."""
    with pytest.raises(SystemExit) as exit_info:
        apply.main(["run", "--sparsity", "0.0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.strip().splitlines()[-1].endswith("sparsity 0.0 is outside (0, 1)")
    reports = {}
    for sparsity in ("0.5", "0.999"):
        path = tmp_path / f"{sparsity}.json"
        code, out, err = run_main(capsys, apply.main, "run", "--allocation", "uniform", "--sparsity", sparsity,
                                  "--wanda-form", "cached", "--eval", "wiki/test", "--eval-windows", "1",
                                  "--json", str(path))
        assert code == 0, err
        reports[sparsity] = json.loads(path.read_text())
    extreme = reports["0.999"]
    assert extreme["achieved_sparsity"] == pytest.approx(0.999, abs=1e-3)
    assert torch.isfinite(torch.tensor(extreme["ppl"]["wiki/test"]))
    assert extreme["ppl"]["wiki/test"] > 10 * reports["0.5"]["ppl"]["wiki/test"]


def test_a_running_search_is_named_as_running_not_offered_to_resume(capsys, tmp_path, no_model):
    ckpt, results = earlier_run(tmp_path, "busy")
    with checkpoint.exclusive(ckpt / "busy"):
        line = refused(capsys, search.main, "--name", "busy", "--workers", "0", "--checkpoint-dir", str(ckpt),
                       "--results-dir", str(results))
    assert f"in use by a running search (pid {os.getpid()})" in line
