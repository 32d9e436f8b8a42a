"""Search checkpoints: one JSON document, replaced atomically so a kill never leaves half a file."""
from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import random
from dataclasses import asdict
from contextlib import contextmanager
from pathlib import Path

from dsa.core.storage import atomic_write_text
from dsa.core.errors import UserError
from dsa.core.paths import check_new_output_dir, check_output_dir

STATE_FILE = "state.json"
LOCK_FILE = ".lock"
# Integer settings of a checkpoint that must be at least 1 (the others at least 0, the seed any).
AT_LEAST_ONE = {"report_windows", "holdout_tune_windows", "calib_windows", "seqlen", "batch_size"}


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


def check_new_run(name: str, checkpoint_dir, results_dir) -> None:
    """A run name is a run: a fresh search under a name whose checkpoint or results exist is
    refused in one line, before any work. Starting again would overwrite the checkpoint (the
    old run could no longer be resumed or extended) and write a report beside the old run's
    files (a best.json of another search read as this one's).

    A checkpoint folder holding no state.json (a run killed before its first generation was
    saved, only its lock file left) is no run yet and may be started again.
    """
    check_output_dir(results_dir, "--results-dir")  # a file there is named as the setting it is
    check_output_dir(checkpoint_dir, "--checkpoint-dir")
    state = Path(checkpoint_dir) / name / STATE_FILE
    if state.exists():
        owner = _running(state.parent)
        if owner:  # not offered to --resume while it runs
            raise UserError(f"{state.parent} is in use by a running search (pid {owner}); choose another --name")
        raise UserError(f"run {name!r} exists ({state}): continue it with --resume {state.parent}, "
                        "or choose a new --name")
    check_new_output_dir(Path(results_dir) / name, f"--name {name}: results",
                         "an earlier run's report is there: choose a new --name")


def _running(directory) -> str | None:
    """The pid of the search holding `directory`'s lock, or None; probed without taking the lock."""
    try:
        handle = open(Path(directory) / LOCK_FILE)
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def save(directory, document: dict) -> Path:
    return atomic_write_text(Path(directory) / STATE_FILE, json.dumps(document))


def load(directory) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path) as handle:
        return json.load(handle)


def check_document(document, **templates) -> None:
    """A checkpoint read back for --resume, checked by type and range before any of its numbers is
    used: each of `templates` (name -> a dataclass instance of defaults, e.g. run=RunConfig())
    names a part of the document whose fields must have their default's type (an integer where
    the default is one: not a boolean, a string of digits or 10**400; a finite number where it is
    a float; nested settings in turn). Fields a part lacks keep their defaults (older files).

    Raises ValueError saying which field is wrong.
    """
    if not isinstance(document, dict):
        raise ValueError("a checkpoint holds one JSON object")
    for name, template in templates.items():
        if name not in document:
            raise ValueError(f"it has no {name!r} part")
        _check_fields(document[name], template, name)


def _check_fields(data, template, where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be an object")
    for field in dataclasses.fields(template):
        if field.name in data:
            _check_value(data[field.name], getattr(template, field.name), f"{where}.{field.name}")


def _check_value(value, default, where: str) -> None:
    """`value` against the type of `default`, and the range every such setting has."""
    def expect(condition, what):
        if not condition:
            raise ValueError(f"{where} must be {what}, not {json.dumps(value)[:40]}")

    name = where.rsplit(".", 1)[-1]
    if dataclasses.is_dataclass(default):
        _check_fields(value, default, where)
    elif isinstance(default, bool):
        expect(type(value) is bool, "true or false")
    elif isinstance(default, int):
        expect(type(value) is int and abs(value) < 2 ** 63, "an integer")
        if name != "seed":
            expect(value >= (1 if name in AT_LEAST_ONE else 0), f"an integer >= {1 if name in AT_LEAST_ONE else 0}")
    elif isinstance(default, float):
        expect(type(value) in (int, float) and abs(value) < 2 ** 63 and math.isfinite(value) and value >= 0,
               "a finite number >= 0")
    elif isinstance(default, str):
        expect(isinstance(value, str), "a string")
    elif default is None:  # a device or dtype name, or the saved random state (restored by random.setstate)
        expect(value is None or isinstance(value, (str, list)), "a string or null")
    elif isinstance(default, tuple) and not (name == "holdout_tune" and isinstance(value, str)):  # older: one text
        expect(isinstance(value, list) and all(isinstance(v, str) or (type(v) in (int, float) and abs(v) < 2 ** 63
                                                                      and math.isfinite(v)) for v in value),
               "a list of names or finite numbers")
    elif isinstance(default, (list, dict)):  # the search's own records: check_state reads them
        expect(isinstance(value, type(default)), f"a JSON {'array' if isinstance(default, list) else 'object'}")


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
