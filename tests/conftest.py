"""Shared, session-wide fixtures: the real built-in model is loaded and calibrated once.

Short windows (256 tokens) and few of them keep the suite quick on 2 CPU cores; the numbers the
tests assert are ranges that hold for those settings.
"""
import pytest
import torch

from evaluators.session import EvaluationSession
from evaluators.workbench import BenchConfig, Workbench

TEST_CONFIG = BenchConfig(model="smollm2-135m", calib_windows=4, seqlen=256, batch_size=4)


@pytest.fixture(scope="session")
def bench() -> Workbench:
    torch.manual_seed(0)
    bench = Workbench(TEST_CONFIG)
    yield bench
    bench.pruner.restore()


@pytest.fixture
def dense_bench(bench) -> Workbench:
    """The shared workbench, guaranteed dense before and after the test."""
    bench.pruner.restore()
    yield bench
    bench.pruner.restore()


@pytest.fixture
def session(dense_bench) -> EvaluationSession:
    """An evaluation session on the shared (dense) workbench."""
    return EvaluationSession(dense_bench)
