"""Search checkpoints: one JSON document, replaced atomically so a kill never leaves half a file."""
from __future__ import annotations

import json
import os
from pathlib import Path

STATE_FILE = "state.json"


def save(directory, document: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as handle:
        json.dump(document, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load(directory) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path) as handle:
        return json.load(handle)
