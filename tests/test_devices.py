"""Devices without a GPU: the bf16 path on CPU, and one logical GPU per Ray actor."""
import dataclasses

import pytest
import ray
import torch

from dsa.distributed.pool import RayPool
from evaluators.assets import cache_dir
from evaluators.models import default_device_dtype
from evaluators.session import EvaluationSession
from evaluators.calibrated import CalibratedModel

from conftest import TEST_CONFIG


def test_bfloat16_on_cpu_end_to_end(session):
    """Calibration, sequential Wanda and perplexity in bf16 stay within a few percent of float32."""
    fp32 = session
    bf16 = EvaluationSession(CalibratedModel(dataclasses.replace(TEST_CONFIG, dtype="bfloat16")))
    assert next(bf16.calibrated.loaded.model.parameters()).dtype == torch.bfloat16
    n = fp32.n_blocks
    results = {}
    for name, s in (("fp32", fp32), ("bf16", bf16)):
        dense = s.perplexities(["wiki/validation"], 2)["wiki/validation"]
        achieved = s.prune([0.5] * n, "wanda")
        pruned = s.perplexities(["wiki/validation"], 2)["wiki/validation"]
        s.restore()
        results[name] = (dense, achieved, pruned)
    (dense32, achieved32, pruned32), (dense16, achieved16, pruned16) = results["fp32"], results["bf16"]
    assert abs(achieved16 - 0.5) < 1e-3 and abs(achieved32 - 0.5) < 1e-3
    assert dense16 == pytest.approx(dense32, rel=0.03)
    assert pruned16 == pytest.approx(pruned32, rel=0.08)
    assert pruned16 > dense16


def test_one_logical_gpu_per_actor():
    """Two logical GPUs declared to Ray: two actors, one GPU each, each seeing only its own."""
    ray.init(address="local", num_cpus=2, num_gpus=2, object_store_memory=100 * 2**20, include_dashboard=False,
             log_to_driver=False)
    try:
        pool = RayPool.start({TEST_CONFIG.model: (TEST_CONFIG, "wiki/validation", 1, "ppl")}, None, None, None)
        try:
            infos = pool.gather("info")
        finally:
            pool.close()
    finally:
        ray.shutdown()
    assert len(infos) == 2  # default: one actor per GPU
    visible = sorted(info["visible_gpus"] for info in infos)
    assert visible == ["0", "1"]  # one device id each, no two actors sharing one
    # With a real GPU, the worker's default device would be the one device it sees, cuda:0 of its own.
    if torch.cuda.is_available():
        assert all(info["device"].startswith("cuda") for info in infos)
    else:
        assert all(info["device"] == "cpu" for info in infos)
    device, dtype = default_device_dtype(None, None)
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_two_models_share_one_gpu():
    """One logical GPU, two models: an actor for each, both on that GPU with half of it each."""
    other = str(cache_dir() / "models" / TEST_CONFIG.model)  # the same weights under a second name
    args = {m: (dataclasses.replace(TEST_CONFIG, model=m), "wiki/validation", 1, "ppl") for m in (TEST_CONFIG.model, other)}
    ray.init(address="local", num_cpus=2, num_gpus=1, object_store_memory=100 * 2**20, include_dashboard=False,
             log_to_driver=False)
    try:
        pool = RayPool.start(args, None, None, None)
        try:
            infos = pool.gather("info")
            free = ray.available_resources().get("GPU", 0.0)
        finally:
            pool.close()
    finally:
        ray.shutdown()
    assert sorted(info["model"] for info in infos) == sorted(args)
    assert [info["visible_gpus"] for info in infos] == ["0", "0"]
    assert free == pytest.approx(0.0)  # 0.5 + 0.5 of the one GPU
