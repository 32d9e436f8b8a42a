"""Named allocation functions shipped with the package, each a JSON function file with its
provenance in "meta" (sparsity, training models, the command that found it, held-out results)
and a free-text "note". A name works wherever a function file does (`--function NAME`)."""
from __future__ import annotations

from pathlib import Path

LIBRARY_DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    return sorted(path.stem for path in LIBRARY_DIR.glob("*.json"))


def path_of(name: str) -> Path | None:
    """The file of a library name, or None when `name` is not one (then it is a path)."""
    return LIBRARY_DIR / f"{name}.json" if name in names() else None


def summary_line(name: str, document: dict, formula: str) -> str:
    """One line of `apply.py list`: name, sparsity, formula and map, training models, held-out
    results (and, for a function trained on all the built-in models, its results on them)."""
    meta = document.get("meta", {})
    mapping = document["map"]
    constant = mapping.get("lambda", mapping.get("eps"))

    def rows(results: dict) -> str:
        return "; ".join(f"{model} {row['wiki/test']:.2f} vs ATP {row['atp']:.2f} ({row['windows']} windows of wiki/test)"
                         for model, row in results.items())

    trained = ", ".join(meta.get("trained_on", [])) or "?"
    line = (f"{name:<15} {meta.get('sparsity', float('nan')):.0%}  {formula} ({mapping['kind']} map {constant:g})"
            f"  trained on {trained}; held out: {rows(meta.get('held_out', {})) or 'none'}")
    if meta.get("on_training_models"):
        line += f"; on its training models: {rows(meta['on_training_models'])}"
    return line
