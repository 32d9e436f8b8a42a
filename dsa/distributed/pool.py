"""Where candidates are evaluated: in this process, or on Ray actors (local, or a cluster).

Both pools offer `call(method, *args)` and `map(method, jobs)` over the worker's methods
(worker.py), so the search never knows which one it has. Requests carry ratio vectors
and feature prefixes, replies carry numbers: the model never leaves its worker.

Fault tolerance: Ray restarts a dead actor (it reloads the model from the local cache) and
retries its in-flight calls; an actor that stays dead is dropped and its calls go to the
others. Evaluations are deterministic, so a failure changes nothing but the wall time.
"""
from __future__ import annotations

import logging
import re
import socket
import time

from tqdm.auto import tqdm

from evaluators.errors import UserError

from .worker import Worker

ACTOR_RESTARTS = 3  # per actor; a crash that repeats more often is not transient


class InProcessPool:
    """One worker in the driver's own process (`--workers 0`, tests, debugging)."""

    size = 1

    def __init__(self, worker: Worker):
        self.worker = worker

    def call(self, method: str, *args):
        return getattr(self.worker, method)(*args)

    def map(self, method: str, jobs: list[tuple], desc: str | None = None) -> list:
        results = []
        with _progress(len(jobs), desc) as bar:
            for job in jobs:
                results.append(self.call(method, *job))
                bar.update()
        return results

    def close(self) -> None:
        pass


class RayPool:
    """Worker actors, one per GPU (num_gpus=1) or per share of the CPU cores."""

    def __init__(self, actors: list, started_ray: bool, startup_s: float):
        self.actors = actors
        self.started_ray = started_ray
        self.startup_s = startup_s

    @property
    def size(self) -> int:
        return len(self.actors)

    @classmethod
    def start(cls, worker_args: tuple, workers: int | None, address: str | None, device: str | None) -> "RayPool":
        import ray

        tic = time.perf_counter()
        started = _connect(address)
        resources = ray.cluster_resources()
        gpus = 0 if device == "cpu" else int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        workers = workers if workers is not None else (gpus or 1)
        limit = gpus or cpus
        if workers > limit:
            raise UserError(f"--workers {workers} exceeds the cluster's {limit} {'GPUs' if gpus else 'CPU cores'}")
        if gpus:
            options, threads = {"num_gpus": 1, "num_cpus": 1}, None
        else:
            threads = max(1, cpus // workers)
            options = {"num_cpus": threads}
        remote = ray.remote(max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)(Worker)
        actors = [remote.options(**options).remote(*worker_args, threads=threads) for _ in range(workers)]
        pool = cls(actors, started, 0.0)
        pool.gather("info")  # waits for every model load; surfaces a failed one
        pool.startup_s = time.perf_counter() - tic
        return pool

    def gather(self, method: str) -> list:
        """The same call on every actor (e.g. their pids), in actor order."""
        import ray

        try:
            return ray.get([getattr(actor, method).remote() for actor in self.actors])
        except ray.exceptions.RayError as err:
            raise UserError(f"a worker failed: {_one_line(err)}")

    def call(self, method: str, *args):
        return self.map(method, [args])[0]

    def map(self, method: str, jobs: list[tuple], desc: str | None = None) -> list:
        """Results of `method(*job)` in job order; each idle actor takes the next job."""
        import ray

        results = [None] * len(jobs)
        waiting = list(range(len(jobs)))[::-1]
        running: dict = {}  # object ref -> (job index, actor)
        idle = list(self.actors)
        bar = _progress(len(jobs), desc)
        while waiting or running:
            while waiting and idle:
                index, actor = waiting.pop(), idle.pop(0)
                running[getattr(actor, method).remote(*jobs[index])] = (index, actor)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            index, actor = running.pop(ref)
            try:
                results[index] = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                # Ray's own restarts and retries are spent: this actor is gone; its job goes on.
                self._drop(actor, err)
                waiting.append(index)
                continue
            except ray.exceptions.RayTaskError as err:
                raise _as_user_error(err)
            idle.append(actor)
            bar.update()
        bar.close()
        return results

    def _drop(self, actor, err) -> None:
        if actor in self.actors:
            self.actors.remove(actor)
        if not self.actors:
            raise UserError(f"every worker died; last error: {_one_line(err)}")
        tqdm.write(f"a worker died ({_one_line(err)}); its jobs go to the {len(self.actors)} left")

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        if self.started_ray:
            ray.shutdown()


def open_pool(worker_args: tuple, workers: int | None, address: str | None, device: str | None,
              bench=None):
    """`workers=0` (or a bench already loaded here): in-process; otherwise Ray actors."""
    if workers == 0 or bench is not None:
        return InProcessPool(Worker(bench if bench is not None else worker_args[0], *worker_args[1:]))
    return RayPool.start(worker_args, workers, address, device)


def _connect(address: str | None) -> bool:
    """Join the cluster at `address` ('auto' or HOST:PORT), or start a local one; True if started."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    if address is None:
        # An embedded local Ray; small object store, since only vectors and numbers travel.
        ray.init(address="local", object_store_memory=100 * 2**20, **quiet)
        return True
    if address != "auto":
        _probe(address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(f"cannot join the Ray cluster at {address!r}: {_one_line(err)}")
    return False


def _probe(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not after Ray's minute of retries, when nothing listens at HOST:PORT."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"bad --address {address!r}: use 'auto' or HOST:PORT (the head's GCS port, 6379 by default)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise UserError(f"no Ray cluster at {address} ({err.strerror or err}); start one with `ray start --head`")


def _as_user_error(err) -> Exception:
    """A worker's UserError (bad model, bad text) reaches the user as the same one line."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, UserError) else err


def _one_line(err) -> str:
    text = str(err)
    found = re.findall(r"UserError: (.+)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return found[-1] if found else (lines[-1] if lines else err.__class__.__name__)


def _progress(total: int, desc: str | None) -> tqdm:
    return tqdm(total=total, desc=desc, leave=False, disable=not desc or total < 2)
