"""Search checkpoints: one JSON document, replaced atomically so a kill never leaves half a file."""
from __future__ import annotations

import fcntl
import json
import os
import random
from dataclasses import asdict
from contextlib import contextmanager
from pathlib import Path

from dsa.core.storage import atomic_write_text
from dsa.core.errors import UserError

STATE_FILE = "state.json"
LOCK_FILE = ".lock"


@contextmanager
def exclusive(directory):
    """Hold the run directory for one process: a second search with the same name is refused.

    An OS file lock, so a killed run never leaves a stale lock behind.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"{directory} is in use by a running search (pid {owner}); choose another --name")
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield directory
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def save(directory, document: dict) -> Path:
    return atomic_write_text(Path(directory) / STATE_FILE, json.dumps(document))


def load(directory) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path) as handle:
        return json.load(handle)


def capture_rng() -> list:
    """Python's random state as JSON-able data (the search's only source of randomness)."""
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def restore_rng(saved: list) -> None:
    version, internal, gauss = saved
    random.setstate((version, tuple(internal), gauss))


def save_search(directory, config, state, extra: dict) -> None:
    """One search's checkpoint: its config and state dataclasses, and the run's settings."""
    state.rng = capture_rng()
    if directory is not None:
        save(directory, {"config": asdict(config), "state": asdict(state), **extra})
