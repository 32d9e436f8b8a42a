"""Ray workers: a search on 2 CPU actors loses nothing when one actor's process is killed."""
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import dataclasses

import pytest
import ray

from dsa.search import runner
from dsa.search.evolution import SearchConfig
from dsa.distributed.pool import RayPool
from evaluators.assets import cache_dir
from evaluators.errors import UserError

from conftest import TEST_CONFIG

ROOT = Path(__file__).resolve().parents[1]
TINY = SearchConfig(population=4, offspring=4, promote=1, generations=2, fitness_windows=2, screen_windows=1, seed=3)


def tiny_config(tmp_path, name):
    return runner.RunConfig(report_texts=("wiki/test",), report_windows=1, name=name, bench=TEST_CONFIG,
                            results_dir=str(tmp_path / "results"), checkpoint_dir=str(tmp_path / "checkpoints"),
                            search=TINY, rank_check=0, report_baselines=("uniform",))


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False,
             log_to_driver=False)
    yield
    ray.shutdown()


def test_killed_worker_changes_nothing(local_ray, tmp_path, monkeypatch):
    calm = runner.run(tiny_config(tmp_path, "calm"), workers=2)
    assert calm["workers"] == {"kind": "RayPool", "count": 2, "startup_s": calm["workers"]["startup_s"]}

    seen = {}
    original_map = RayPool.map_routed

    def map_and_kill(pool, method, jobs, desc=None):
        """In generation 1's screening, SIGKILL the second actor while it evaluates a candidate."""
        if desc != "screening" or seen:
            return original_map(pool, method, jobs, desc)
        seen["before"] = [info["pid"] for info in pool.gather("info")]
        threading.Timer(0.3, os.kill, (seen["before"][1], signal.SIGKILL)).start()
        result = original_map(pool, method, jobs, desc)
        seen["after"] = [info["pid"] for info in pool.gather("info")]
        return result

    monkeypatch.setattr(RayPool, "map_routed", map_and_kill)
    disturbed = runner.run(tiny_config(tmp_path, "disturbed"), workers=2)

    assert seen["before"][0] == seen["after"][0]
    assert seen["before"][1] != seen["after"][1]  # the killed actor was restarted, model reloaded
    for key in ("evaluations", "windows_evaluated", "cache_hits", "history"):
        assert disturbed[key] == calm[key], key  # every candidate evaluated, none twice in the record
    assert disturbed["best"]["function"] == calm["best"]["function"]
    assert disturbed["best"]["val_ppl"] == calm["best"]["val_ppl"]
    assert disturbed["best"]["test_ppl"] == calm["best"]["test_ppl"]
    assert 20 < calm["best"]["val_ppl"] < calm["baselines"]["uniform"]["val_ppl"] + 1e-9


def test_more_workers_than_cores_is_refused(local_ray):
    args = {TEST_CONFIG.model: (TEST_CONFIG, "wiki/validation", 1, "ppl")}
    with pytest.raises(UserError, match="exceed the cluster's 2 CPU cores"):
        RayPool.start(args, 3, None, "cpu")


def test_jobs_reach_the_workers_holding_their_model(local_ray, bench):
    """Two models, one actor each: every routed job is answered by an actor holding its model."""
    other = str(cache_dir() / "models" / TEST_CONFIG.model)  # the same weights under a second name
    args = {m: (dataclasses.replace(TEST_CONFIG, model=m), "wiki/validation", 1, "ppl") for m in (TEST_CONFIG.model, other)}
    pool = RayPool.start(args, 1, None, "cpu")
    try:
        jobs = [(m, ()) for m in (TEST_CONFIG.model, other, other, TEST_CONFIG.model, other, other)]
        infos = pool.map_routed("info", jobs)
        assert [info["model"] for info in infos] == [m for m, _ in jobs]
        assert len({info["pid"] for info in infos}) == 2
        with pytest.raises(ValueError, match="no workers hold"):
            pool.map_routed("info", [("gemma3-270m", ())])
    finally:
        pool.close()


@pytest.mark.parametrize("address, reason", [("127.0.0.1:9", "no Ray cluster at 127.0.0.1:9"),
                                             ("nonsense", "bad --address 'nonsense'")])
def test_bad_address_fails_fast(tmp_path, address, reason):
    result = subprocess.run([sys.executable, "search.py", "--address", address, "--name", "x",
                             "--checkpoint-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and reason in lines[0]
