"""Shared, session-wide fixtures: the real built-in model is loaded and calibrated once.

Short windows (256 tokens) and few of them keep the suite quick on 2 CPU cores; the numbers the
tests assert are ranges that hold for those settings.
"""
import pytest
import torch

from evaluators.session import EvaluationSession
from evaluators.calibrated import ModelConfig, CalibratedModel

TEST_CONFIG = ModelConfig(model="smollm2-135m", calib_windows=4, seqlen=256, batch_size=4)


@pytest.fixture(scope="session")
def calibrated() -> CalibratedModel:
    torch.manual_seed(0)
    calibrated = CalibratedModel(TEST_CONFIG)
    yield calibrated
    calibrated.pruner.restore()


@pytest.fixture
def dense_calibrated(calibrated) -> CalibratedModel:
    """The shared calibrated model, guaranteed dense before and after the test."""
    calibrated.pruner.restore()
    yield calibrated
    calibrated.pruner.restore()


@pytest.fixture
def session(dense_calibrated) -> EvaluationSession:
    """An evaluation session on the shared (dense) calibrated model."""
    return EvaluationSession(dense_calibrated)


def run_main(capsys, *argv):
    """apply.main in-process: (exit code, stdout, stderr)."""
    import apply

    try:
        apply.main(list(argv))
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    out = capsys.readouterr()
    return code, out.out, out.err
