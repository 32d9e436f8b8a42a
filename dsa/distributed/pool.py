"""Where candidates are evaluated: in this process, or on Ray actors (local, or a cluster).

Workers are grouped by the model they hold (one group per model of a multi-model search).
Both pools offer `call(method, *args, group=)`, `map(method, jobs, group=)` and
`map_routed(method, [(group, args), ...])` over the worker's methods (worker.py), so the
search never knows which pool it has; a job always reaches a worker of its own group.
Requests carry ratio vectors and feature prefixes, replies carry numbers: the model never
leaves its worker.

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
    """One worker per model in the driver's own process (`--workers 0`, tests, debugging)."""

    def __init__(self, workers: dict[str, Worker]):
        self.workers = workers

    @property
    def size(self) -> int:
        return len(self.workers)

    @property
    def groups(self) -> list[str]:
        return list(self.workers)

    def call(self, method: str, *args, group: str | None = None):
        return getattr(self.workers[group or self.groups[0]], method)(*args)

    def map(self, method: str, jobs: list[tuple], desc: str | None = None, group: str | None = None) -> list:
        return self.map_routed(method, [(group or self.groups[0], job) for job in jobs], desc)

    def map_routed(self, method: str, jobs: list[tuple[str, tuple]], desc: str | None = None) -> list:
        results = []
        with _progress(len(jobs), desc) as bar:
            for group, args in jobs:
                results.append(getattr(self.workers[group], method)(*args))
                bar.update()
        return results

    def release(self) -> None:
        """Free the workers (their models) before another pool needs the memory."""
        self.workers = {}

    def close(self) -> None:
        self.release()


class RayPool:
    """Worker actors, one per GPU (num_gpus=1) or per share of the CPU cores, grouped by model."""

    def __init__(self, groups: dict[str, list], started_ray: bool, startup_s: float):
        self.by_group = groups
        self.started_ray = started_ray
        self.startup_s = startup_s

    @property
    def actors(self) -> list:
        return [actor for actors in self.by_group.values() for actor in actors]

    @property
    def size(self) -> int:
        return len(self.actors)

    @property
    def groups(self) -> list[str]:
        return list(self.by_group)

    @classmethod
    def start(cls, worker_args: dict[str, tuple], workers: int | None, address: str | None,
              device: str | None) -> "RayPool":
        """`workers` actors for each model of `worker_args` (model -> Worker arguments)."""
        import ray

        tic = time.perf_counter()
        started = _connect(address)
        resources = ray.cluster_resources()
        gpus = 0 if device == "cpu" else int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        per_group = workers if workers is not None else max(1, gpus // len(worker_args))
        total = per_group * len(worker_args)
        limit = gpus or cpus
        if total > limit and (gpus or workers is not None):
            raise UserError(f"{total} workers ({per_group} per model) exceed the cluster's {limit} "
                            f"{'GPUs' if gpus else 'CPU cores'}")
        if gpus:
            options, threads = {"num_gpus": 1, "num_cpus": 1}, None
        else:
            # Without GPUs the cores are shared out; several models on fewer cores share them.
            share = cpus / total
            threads = max(1, int(share))
            options = {"num_cpus": share}
        remote = ray.remote(max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)(Worker)
        groups = {group: [remote.options(**options).remote(*args, threads=threads) for _ in range(per_group)]
                  for group, args in worker_args.items()}
        pool = cls(groups, started, 0.0)
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

    def call(self, method: str, *args, group: str | None = None):
        return self.map(method, [args], group=group)[0]

    def map(self, method: str, jobs: list[tuple], desc: str | None = None, group: str | None = None) -> list:
        return self.map_routed(method, [(group or self.groups[0], job) for job in jobs], desc)

    def map_routed(self, method: str, jobs: list[tuple[str, tuple]], desc: str | None = None) -> list:
        """Results of `method(*args)` in job order; each idle actor of a job's group takes the next job."""
        import ray

        results = [None] * len(jobs)
        waiting = {group: [i for i in range(len(jobs)) if jobs[i][0] == group][::-1] for group in self.by_group}
        unknown = {group for group, _ in jobs} - set(self.by_group)
        if unknown:
            raise ValueError(f"no workers hold {sorted(unknown)}")
        running: dict = {}  # object ref -> (job index, group, actor)
        idle = {group: list(actors) for group, actors in self.by_group.items()}
        bar = _progress(len(jobs), desc)
        while any(waiting.values()) or running:
            for group in self.by_group:
                while waiting[group] and idle[group]:
                    index, actor = waiting[group].pop(), idle[group].pop(0)
                    running[getattr(actor, method).remote(*jobs[index][1])] = (index, group, actor)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            index, group, actor = running.pop(ref)
            try:
                results[index] = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                # Ray's own restarts and retries are spent: this actor is gone; its job goes on.
                self._drop(group, actor, err)
                idle[group] = [a for a in idle[group] if a is not actor]
                waiting[group].append(index)
                continue
            except ray.exceptions.RayTaskError as err:
                raise _as_user_error(err)
            idle[group].append(actor)
            bar.update()
        bar.close()
        return results

    def _drop(self, group: str, actor, err) -> None:
        actors = self.by_group[group]
        if actor in actors:
            actors.remove(actor)
        if not actors:
            raise UserError(f"every worker holding {group} died; last error: {_one_line(err)}")
        tqdm.write(f"a worker died ({_one_line(err)}); its jobs go to the {len(actors)} left holding {group}")

    def release(self) -> None:
        """Stop the actors (and free their cores and GPUs for another pool); Ray keeps running."""
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.by_group = {}

    def close(self) -> None:
        import ray

        self.release()
        if self.started_ray:
            ray.shutdown()


def open_pool(worker_args: dict[str, tuple], workers: int | None, address: str | None, device: str | None,
              benches: dict | None = None):
    """Workers for each model of `worker_args` (model -> Worker arguments, the first one a
    BenchConfig). `workers=0`, or benches already loaded here: in-process; otherwise Ray actors
    (None: one per GPU, else one per model sharing the CPU cores)."""
    if workers == 0 or benches:
        benches = benches or {}
        return InProcessPool({group: Worker(benches.get(group, args[0]), *args[1:])
                              for group, args in worker_args.items()})
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
