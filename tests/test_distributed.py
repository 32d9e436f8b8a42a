"""Ray workers on a simulated two-machine cluster: a search loses nothing when one worker's
process is killed, or when a whole node disappears."""
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dataclasses

import psutil
import pytest
import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

from dsa.search import runner
from dsa.search.evolution import SearchConfig
from dsa.distributed.pool import RayPool
from evaluators.assets import cache_dir
from dsa.core.errors import UserError

from conftest import TEST_CONFIG

ROOT = Path(__file__).resolve().parents[1]
TINY = SearchConfig(population=4, offspring=4, promote=1, generations=2, fitness_windows=2, screen_windows=1, seed=3)
NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20}  # one core each: two workers land one per node


def tiny_config(tmp_path, name):
    return runner.RunConfig(report_texts=("wiki/test",), report_windows=1, name=name, model_config=TEST_CONFIG,
                            results_dir=str(tmp_path / "results"), checkpoint_dir=str(tmp_path / "checkpoints"),
                            search=TINY, rank_check=0, report_baselines=("uniform",))


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a second node on this machine, as `ray start --head` and `ray start --address`
    on two machines would give; the tests join it as a search joins a cluster (`--address`)."""
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    cluster.add_node(**NODE)
    ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def calm(two_nodes, tmp_path_factory):
    """The undisturbed search that every disturbed one must reproduce exactly."""
    return runner.run(tiny_config(tmp_path_factory.mktemp("calm"), "calm"), workers=2, address=two_nodes.address)


def same_search(disturbed, calm):
    for key in ("evaluations", "windows_evaluated", "cache_hits", "history"):
        assert disturbed[key] == calm[key], key  # every candidate evaluated, none twice in the record
    assert disturbed["best"]["function"] == calm["best"]["function"]
    assert disturbed["best"]["val_ppl"] == calm["best"]["val_ppl"]
    assert disturbed["best"]["test_ppl"] == calm["best"]["test_ppl"]


def pids_once_all_answer(pool, timeout=120):
    """Every worker's pid, once each answers (a killed one after Ray has restarted it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return [info["pid"] for info in pool.gather("info")]
        except UserError:  # Ray has not yet seen the death: the call failed rather than waited
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_killed_worker_changes_nothing(two_nodes, calm, tmp_path, monkeypatch):
    assert calm["workers"] == {"kind": "RayPool", "count": 2, "startup_s": calm["workers"]["startup_s"], "reruns": 0}
    seen = {}
    original_map = RayPool.map_routed

    def map_and_kill(pool, method, jobs, desc=None):
        """In generation 1's screening, SIGKILL the second actor while it evaluates a candidate."""
        if desc != "screening" or seen:
            return original_map(pool, method, jobs, desc)
        seen["before"] = [info["pid"] for info in pool.gather("info")]
        threading.Timer(0.3, os.kill, (seen["before"][1], signal.SIGKILL)).start()
        result = original_map(pool, method, jobs, desc)
        seen["after"] = pids_once_all_answer(pool)
        return result

    monkeypatch.setattr(RayPool, "map_routed", map_and_kill)
    disturbed = runner.run(tiny_config(tmp_path, "disturbed"), workers=2, address=two_nodes.address)

    assert seen["before"][0] == seen["after"][0]
    assert seen["before"][1] != seen["after"][1]  # the killed actor was restarted, model reloaded
    assert disturbed["workers"]["count"] == 2 and disturbed["workers"]["reruns"] >= 1
    same_search(disturbed, calm)
    assert 20 < calm["best"]["val_ppl"] < calm["baselines"]["uniform"]["val_ppl"] + 1e-9


def test_lost_node_changes_nothing(two_nodes, calm, tmp_path, monkeypatch, capsys):
    """The second node dies while its worker evaluates a candidate: the candidate runs again on the
    head's worker; the lost worker, which no node has room to restart, is dropped after the
    bounded wait with one warning; the search ends on the head with the same result."""
    (second,) = two_nodes.worker_nodes
    raylet = second.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid

    def lose_node():
        """The machine is gone: every process of the node is SIGKILLed (Cluster.remove_node would
        also draw from this process's global random numbers, which the search's own draws depend on).
        The node's workers are the raylet's children, not its tracked processes: killed here too, or
        one goes on answering for seconds and its loss may come only after the search."""
        workers = psutil.Process(raylet).children(recursive=True)
        second.kill_all_processes(check_alive=False, allow_graceful=False, wait=True)
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()

    original_map = RayPool.map_routed

    def map_and_lose_node(pool, method, jobs, desc=None):
        if desc == "screening" and pool.restart_wait != 5.0:
            pool.restart_wait = 5.0  # the bounded wait, short for the test (a search's: minutes)
            threading.Timer(0.3, lose_node).start()
        return original_map(pool, method, jobs, desc)

    monkeypatch.setattr(RayPool, "map_routed", map_and_lose_node)
    try:
        lost = runner.run(tiny_config(tmp_path, "lost"), workers=2, address=two_nodes.address)
    finally:  # the next tests get a second node again
        two_nodes.remove_node(second, allow_graceful=False)
        two_nodes.add_node(**NODE)
        two_nodes.wait_for_nodes()
    err = capsys.readouterr().err
    assert err.count("warning: lost a worker holding") == 1, err
    assert err.count("warning: dropped a lost worker holding") == 1, err
    assert "Traceback" not in err, err
    assert lost["workers"]["count"] == 1 and lost["workers"]["reruns"] >= 1  # a job was in flight there
    same_search(lost, calm)


def test_more_workers_than_cores_is_refused(two_nodes):
    args = {TEST_CONFIG.model: (TEST_CONFIG, "wiki/validation", 1, "ppl")}
    with pytest.raises(UserError, match="exceed the cluster's 2 CPU cores"):
        RayPool.start(args, 3, None, "cpu")


def test_jobs_reach_the_workers_holding_their_model(two_nodes, calibrated):
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


def test_a_worker_that_cannot_load_its_model_fails_in_one_line(tmp_path):
    """A hub id passes the driver's checks (only the loading machine can tell whether it is there);
    the Ray worker's failure reaches the user as the worker's own line, as with --workers 0,
    not as Ray's tracebacks and retries."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": "3", "HF_HUB_DOWNLOAD_TIMEOUT": "3"}
    result = subprocess.run([sys.executable, "search.py", "--model", "example-org/model-that-is-not-cached",
                             "--workers", "1", "--name", "x", "--checkpoint-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no network and not cached: example-org/model-that-is-not-cached")


def test_kill_9_of_the_search_leaves_no_ray_processes(tmp_path):
    """Without the watchdog, the embedded Ray's agents outlive a kill -9 of the search by about a
    minute; with it, every process of that Ray session is gone within seconds."""
    import psutil

    search = subprocess.Popen([sys.executable, "search.py", "--workers", "1", "--name", "k", "--checkpoint-dir",
                               str(tmp_path / "c"), "--results-dir", str(tmp_path / "r"), "--seqlen", "128",
                               "--calib-windows", "2", "--fitness-windows", "1", "--population", "4",
                               "--offspring", "2", "--promote", "1", "--generations", "40"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "c" / "k" / "state.json"
    try:
        deadline = time.monotonic() + 600  # a hang guard: on 2 cores shared with another job, start-up took > 240 s
        while not state.exists():  # generation 1 done: the Ray worker is up and evaluating
            assert search.poll() is None and time.monotonic() < deadline, "the search did not get going"
            time.sleep(0.5)
        family = psutil.Process(search.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in family)
    finally:
        search.kill()
        search.wait()
    gone, alive = psutil.wait_procs(family, timeout=20)
    assert not alive, [" ".join(p.cmdline())[:80] for p in alive]
