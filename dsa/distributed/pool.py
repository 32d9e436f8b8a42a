"""Where candidates are evaluated: in this process, or on Ray actors (local, or a cluster).

Workers are grouped by the model they hold (one group per model of a multi-model search).
Both pools offer `call(method, *args, group=)`, `map(method, jobs, group=)` and
`map_routed(method, [(group, args), ...])` over the worker's methods (worker.py), so the
search never knows which pool it has; a job always reaches a worker of its own group.
Requests carry ratio vectors and feature prefixes, replies carry numbers: the model never
leaves its worker.

Fault tolerance: a call whose worker is lost (its process or its whole node died) runs again
on another worker of its group at once; Ray restarts the lost actor where there is room (it
reloads the model from that machine's cache), and it takes jobs again once it answers. One that
does not come back within `restart_wait` (its node is gone and no other has room) is dropped with
a warning. Evaluations are deterministic, so a failure changes nothing but the wall time.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from dsa.core.errors import UserError

from .worker import Worker

ACTOR_RESTARTS = 3  # per actor; a crash that repeats more often is not transient
RESTART_WAIT_S = 120.0  # a lost worker gets at least this long (or twice the pool's start-up) to come back
PROBE_EVERY_S = 1.0  # how often a lost worker is asked whether it is back
WATCHDOG = Path(__file__).with_name("watchdog.py")


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


@dataclass
class _Lost:
    """A worker whose call failed because it is gone; Ray is restarting it (or cannot place it)."""

    group: str
    deadline: float    # dropped if it has not answered a probe by then
    next_probe: float  # infinite while a probe is on its way


class RayPool:
    """Worker actors, one per GPU (num_gpus=1) or per share of the CPU cores, grouped by model."""

    def __init__(self, groups: dict[str, list], started_ray: bool, startup_s: float):
        self.by_group = groups
        self.started_ray = started_ray
        self.startup_s = startup_s
        self.restart_wait = RESTART_WAIT_S
        self.lost: dict = {}  # actor -> _Lost, until it answers a probe or is dropped
        self.reruns = 0  # jobs run again because their worker was lost while running them

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
        if device and device.startswith("cuda") and not gpus:
            raise UserError(f"--device {device}: the Ray cluster has no GPUs")
        per_group = workers if workers is not None else max(1, gpus // len(worker_args))
        total = per_group * len(worker_args)
        if total > cpus and (gpus or workers is not None):
            raise UserError(f"{total} workers ({per_group} per model) exceed the cluster's {cpus} CPU cores")
        if gpus:
            # More actors than GPUs (several small models, one GPU): they share GPUs in equal
            # fractions, each on one device, each holding its own model there.
            options, threads = {"num_gpus": min(1.0, gpus / total), "num_cpus": 1}, None
        else:
            # Without GPUs the cores are shared out; several models on fewer cores share them.
            share = cpus / total
            threads = max(1, int(share))
            options = {"num_cpus": share}
        # No task retries by Ray: it would hold a lost worker's calls for its restart, which never
        # comes when the worker's node is gone; map_routed runs them again on the others instead.
        remote = ray.remote(max_restarts=ACTOR_RESTARTS, max_task_retries=0)(Worker)
        groups = {group: [remote.options(**options).remote(*args, threads=threads) for _ in range(per_group)]
                  for group, args in worker_args.items()}
        pool = cls(groups, started, 0.0)
        try:
            pool.gather("info")  # waits for every model load; surfaces a failed one
        except BaseException:
            pool.close()  # the Ray it started, too: nobody else holds this pool
            raise
        pool.startup_s = time.perf_counter() - tic
        # A restarted worker loads its model again, about as long as the start-up took.
        pool.restart_wait = max(RESTART_WAIT_S, 2 * pool.startup_s)
        return pool

    def gather(self, method: str) -> list:
        """The same call on every actor (e.g. their pids), in actor order."""
        import ray

        try:
            return ray.get([getattr(actor, method).remote() for actor in self.actors])
        except ray.exceptions.RayError as err:
            raise _worker_error(err)

    def call(self, method: str, *args, group: str | None = None):
        return self.map(method, [args], group=group)[0]

    def map(self, method: str, jobs: list[tuple], desc: str | None = None, group: str | None = None) -> list:
        return self.map_routed(method, [(group or self.groups[0], job) for job in jobs], desc)

    def map_routed(self, method: str, jobs: list[tuple[str, tuple]], desc: str | None = None) -> list:
        """Results of `method(*args)` in job order; each idle actor of a job's group takes the next job.

        A job whose worker is lost runs again on the next idle worker of its group; the lost
        worker gets jobs again once it answers a probe (Ray restarted it), or is dropped."""
        import ray

        results = [None] * len(jobs)
        waiting = {group: [i for i in range(len(jobs)) if jobs[i][0] == group][::-1] for group in self.by_group}
        unknown = {group for group, _ in jobs} - set(self.by_group)
        if unknown:
            raise ValueError(f"no workers hold {sorted(unknown)}")
        running: dict = {}  # object ref -> (job index, or None for a probe, group, actor)
        idle = {group: [a for a in actors if a not in self.lost] for group, actors in self.by_group.items()}
        for lost in self.lost.values():
            lost.next_probe = 0.0  # an earlier map's probes are not waited for: probe afresh
        bar = _progress(len(jobs), desc)
        while any(waiting.values()) or any(index is not None for index, _, _ in running.values()):
            for group in self.by_group:
                while waiting[group] and idle[group]:
                    index, actor = waiting[group].pop(), idle[group].pop(0)
                    running[getattr(actor, method).remote(*jobs[index][1])] = (index, group, actor)
            self._probe_lost(running)
            if not running:  # every worker of the waiting jobs' group is lost: wait for a probe
                time.sleep(PROBE_EVERY_S)
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=PROBE_EVERY_S)
            if not ready:
                continue
            index, group, actor = running.pop(ready[0])
            try:
                value = ray.get(ready[0])
            except ray.exceptions.RayActorError as err:
                if index is not None:
                    self.reruns += 1
                    waiting[group].append(index)
                if err.actor_init_failed:  # restarted, but its model failed to load there: for good
                    self._drop(group, actor, running, _one_line(err))
                else:
                    self._lose(group, actor, err)
                continue
            except ray.exceptions.RayTaskError as err:
                raise _as_user_error(err)
            if index is None:
                del self.lost[actor]
                _warn(f"the lost worker holding {group} is back (restarted by Ray)")
            else:
                results[index] = value
                bar.update()
            idle[group].append(actor)
        bar.close()
        return results

    def _lose(self, group: str, actor, err) -> None:
        """A call failed because its worker is gone: keep it out of the rotation until it answers."""
        now = time.monotonic()
        if actor in self.lost:  # a probe failed: Ray has not restarted it yet
            self.lost[actor].next_probe = now + PROBE_EVERY_S
            return
        self.lost[actor] = _Lost(group, now + self.restart_wait, now + PROBE_EVERY_S)
        _warn(f"lost a worker holding {group} ({_one_line(err)}); its job runs again on another, "
              f"and Ray restarts the worker (waiting up to {self.restart_wait:.0f} s)")

    def _probe_lost(self, running: dict) -> None:
        """Ask each lost worker whether it is back; drop one that missed its deadline."""
        now = time.monotonic()
        for actor, lost in list(self.lost.items()):
            if now > lost.deadline:
                self._drop(lost.group, actor, running, f"not restarted within {self.restart_wait:.0f} s; "
                                                       "no node has room for it")
            elif now >= lost.next_probe:
                lost.next_probe = float("inf")
                running[actor.info.remote()] = (None, lost.group, actor)

    def _drop(self, group: str, actor, running: dict, why: str) -> None:
        import ray

        self.lost.pop(actor, None)
        for ref, (_, _, probed) in list(running.items()):
            if probed == actor:
                del running[ref]
        ray.kill(actor)  # a restart that has no room would otherwise wait for it forever
        actors = self.by_group[group]
        actors.remove(actor)
        if not actors:
            raise UserError(f"every worker holding {group} was lost; the last one: {why}")
        _warn(f"dropped a lost worker holding {group} ({why}); going on with the {len(actors)} left")

    def release(self) -> None:
        """Stop the actors (and free their cores and GPUs for another pool); Ray keeps running."""
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.by_group = {}
        self.lost = {}

    def close(self) -> None:
        import ray

        self.release()
        if self.started_ray:
            ray.shutdown()
            _release_watchdog()


def open_pool(worker_args: dict[str, tuple], workers: int | None, address: str | None, device: str | None,
              calibrated_models: dict | None = None):
    """Workers for each model of `worker_args` (model -> Worker arguments, the first one a
    ModelConfig). `workers=0`, or calibrated_models already loaded here: in-process; otherwise Ray actors
    (None: one per GPU, else one per model sharing the CPU cores)."""
    if workers == 0 or calibrated_models:
        calibrated_models = calibrated_models or {}
        return InProcessPool({group: Worker(calibrated_models.get(group, args[0]), *args[1:])
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
        context = ray.init(address="local", object_store_memory=100 * 2**20, **quiet)
        _start_watchdog(context.address_info["session_dir"])
        return True
    if address != "auto":
        _probe(address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(f"cannot join the Ray cluster at {address!r}: {_one_line(err)}")
    return False


_watchdog: subprocess.Popen | None = None  # its stdin stays open as long as this process lives


def _start_watchdog(session_dir: str) -> None:
    """After kill -9 of this process, end the embedded Ray's agents and workers at once rather than
    a minute later (watchdog.py says why they linger)."""
    global _watchdog
    # Its own session: a Ctrl-C meant for the search does not reach it.
    _watchdog = subprocess.Popen([sys.executable, str(WATCHDOG), session_dir, str(os.getpid())],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
    atexit.register(_release_watchdog)  # a normal exit, even without close(): Ray stops itself


def _release_watchdog() -> None:
    """This process stops Ray itself: tell the watchdog so (a line), and it exits."""
    global _watchdog
    if _watchdog is not None:
        _watchdog.communicate(b"stopped\n", timeout=30)
        _watchdog = None


def _probe(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not after Ray's minute of retries, when nothing listens at HOST:PORT."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"bad --address {address!r}: use 'auto' or HOST:PORT (the head's GCS port, 6379 by default)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise UserError(f"no Ray cluster at {address} ({err.strerror or err}); start one with `ray start --head`")


def _worker_error(err) -> UserError:
    """A worker that failed to start: its own UserError's line (bad model, bad text), as
    --workers 0 prints it, or Ray's last line."""
    found = re.findall(r"UserError: (.+)", str(err))
    return UserError(found[-1] if found else f"a worker failed: {_one_line(err)}")


def _warn(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)  # above any progress bar


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
