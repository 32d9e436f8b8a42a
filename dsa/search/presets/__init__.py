"""Named starting points of a search: JSON files beside this module, each a partial RunConfig
tree (e.g. {"search": {"operands": ["depth"]}}); "description" and "kind" (what kind of function
the preset finds) are words about it, not settings. dsa/search/settings.py layers them."""
from __future__ import annotations

import json
from pathlib import Path

from dsa.core.errors import UserError

PRESETS_DIR = Path(__file__).resolve().parent
DEFAULT_PRESET = "quick"
ABOUT = ("description", "kind")  # a preset's words about itself, not settings


def names() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.json"))


def _read(name: str) -> dict:
    if name not in names():
        raise UserError(f"unknown preset {name!r}: one of {', '.join(names())}")
    return json.loads((PRESETS_DIR / f"{name}.json").read_text())


def load_preset(name: str) -> dict:
    """A preset's settings (its words about itself left out)."""
    return {k: v for k, v in _read(name).items() if k not in ABOUT}


def describe(name: str) -> dict:
    return {k: v for k, v in _read(name).items() if k in ABOUT}
