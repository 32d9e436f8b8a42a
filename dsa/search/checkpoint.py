"""Search checkpoints: one JSON document, replaced atomically so a kill never leaves half a file."""
from __future__ import annotations

import json
from pathlib import Path

from evaluators.cache import atomic_write_text

STATE_FILE = "state.json"


def save(directory, document: dict) -> Path:
    return atomic_write_text(Path(directory) / STATE_FILE, json.dumps(document))


def load(directory) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path) as handle:
        return json.load(handle)
