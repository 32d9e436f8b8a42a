"""Hand a pruned model or its allocation to other tools.

- save_pruned: the pruned model as a Hugging Face directory (safetensors), its tokenizer and
  dsa.json (function, ratios, achieved sparsity, pruner, data), so that
  AutoModelForCausalLM.from_pretrained(DIR) gives the same model and the same perplexity; or,
  with weights="bitmask", the pruned matrices in compressed-tensors' sparse-bitmask layout
  (evaluators/bitmask.py), which dsa's loader reads back.
- llmcompressor_recipe / write_recipe: a one-shot recipe for vllm-project/llm-compressor's
  SparseGPTModifier or WandaPruningModifier with one sparsity per decoder block, so the
  allocation can be re-applied in a serving stack's toolchain.

llm-compressor's recipe schema (checked against llmcompressor 0.14.0.1): a stage key ending in
`_stage`, a group key ending in `_modifiers`, then modifier name -> arguments. A list
`sparsity` holds one value per module matched by `targets`, in model order, and every Linear
inside such a module is pruned at that value; `mask_structure` is "N:M" ("0:0" unstructured).
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from dsa.core.storage import atomic_write_text, new_file_mode, staged_directory
from dsa.core.paths import check_output_dir
from dsa.core.errors import UserError
from evaluators import bitmask
from evaluators.models import LoadedModel
from evaluators.pruners.base import is_per_matrix
from evaluators.pruners.sparsegpt import SPARSEGPT_BLOCK_SIZE, SPARSEGPT_DAMPING

SAVE_MARKER = "dsa.json"
MAX_MARKER_BYTES = 1 << 20  # a save's dsa.json is a few kilobytes
MODIFIERS = {"wanda": "WandaPruningModifier", "sparsegpt": "SparseGPTModifier"}
SPARSEGPT_ARGS = {"block_size": SPARSEGPT_BLOCK_SIZE, "dampening_frac": SPARSEGPT_DAMPING}  # as we prune
STAGE, GROUP = "sparsity_stage", "sparsity_modifiers"


def check_save_dir(directory) -> Path:
    """Refuse, before any work, a target that is not new, empty, or an untouched earlier save.

    An earlier save lists the files it wrote in dsa.json; one holding anything else (a user's
    notes) is refused rather than replaced, so nothing the tool did not write is ever deleted.
    The list is trusted only when it has the shape a save writes (plain file names), and the
    path of a symbolic link is the directory it points to (the link stays a link).
    """
    out = check_output_dir(directory, "--save")
    out = out.resolve() if out.is_symlink() else out
    if not out.is_dir() or not any(out.iterdir()):
        return out
    marker = out / SAVE_MARKER
    if not marker.is_file():
        raise UserError(f"--save {out}: directory is not empty and holds no {SAVE_MARKER}; choose a new directory")
    written = saved_files(marker)
    if written is None:
        raise UserError(f"--save {out}: its {SAVE_MARKER} does not list the files it wrote; choose a new directory")
    others = sorted(p.name for p in out.iterdir() if p.name not in written | {SAVE_MARKER})
    if others:
        raise UserError(f"--save {out}: holds files dsa did not write ({', '.join(others[:3])}); choose a new directory")
    return out


def saved_files(marker: Path) -> set[str] | None:
    """The file names a save's dsa.json lists, or None unless it is a JSON object whose "files"
    is a list of plain names (a string would read as a set of letters, a path could name a file
    outside the directory)."""
    try:
        with open(marker, "rb") as handle:
            files = json.loads(handle.read(MAX_MARKER_BYTES)).get("files")
    except (OSError, ValueError, RecursionError, AttributeError):  # unreadable, cut, not JSON, not an object
        return None
    plain = isinstance(files, list) and all(
        isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
        and "\0" not in name for name in files)
    return set(files) if plain else None


def save_pruned(loaded: LoadedModel, directory, info: dict, weights: str = "dense") -> Path:
    """Write model (safetensors), tokenizer and dsa.json to `directory` (replacing an earlier save).
    weights="bitmask": the pruned matrices in compressed-tensors' sparse-bitmask layout."""
    out = check_save_dir(directory)
    with staged_directory(out) as tmp:
        # the bitmask layout rewrites one file: no shards then
        loaded.model.save_pretrained(tmp, **({"max_shard_size": "1000GB"} if weights == "bitmask" else {}))
        loaded.tokenizer.save_pretrained(tmp)
        if not any(tmp.glob("*.safetensors")):
            raise UserError(f"the model was not saved as safetensors in {out}")
        if weights == "bitmask":
            names = {id(module): name for name, module in loaded.model.named_modules()}
            bitmask.compress_file(tmp, [f"{names[id(layer)]}.weight" for block in loaded.blocks
                                        for layer in block.linears.values()], info["achieved_sparsity"])
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / SAVE_MARKER).write_text(json.dumps({**info, "files": files}, indent=2))
        for path in tmp.iterdir():  # safetensors writes 0600; a saved model is shared like any other file
            if path.is_file() and not path.is_symlink():
                os.chmod(path, new_file_mode())
    for left in interrupted_saves(out):
        print(f"note: {left} was left by an interrupted save to {out.name} (killed while writing); "
              "remove it once you do not need it", file=sys.stderr)
    return out


def interrupted_saves(target) -> list[Path]:
    """Directories a killed save to `target` left beside it: its staging directory (a part of a
    model) or, killed between the two renames, the earlier save set aside (staged_directory's
    `.NAME.*.tmp` and `.NAME.*.old`). Named, never deleted: a user may have kept one."""
    target = Path(target)
    return sorted(p for p in target.parent.glob(f".{glob.escape(target.name)}.*")
                  if p.suffix in (".tmp", ".old") and p.is_dir() and not p.is_symlink())


def _container(block_names: Sequence[str]) -> str:
    """'model.layers' for blocks 'model.layers.0' ... (the ModuleList that holds them)."""
    parents = {name.rsplit(".", 1)[0] for name in block_names}
    expected = [f"{next(iter(parents))}.{i}" for i in range(len(block_names))]
    if len(parents) != 1 or list(block_names) != expected:
        raise UserError(f"blocks {block_names[:2]}... are not one list of modules; cannot write a recipe")
    return parents.pop()


def check_exportable(pruner: str) -> None:
    if pruner not in MODIFIERS:
        raise UserError(f"llm-compressor has one-shot per-layer sparsity only for wanda and sparsegpt, not {pruner}; "
                        "use --pruner wanda or --pruner sparsegpt with --export-llmcompressor")


def llmcompressor_recipe(block_names: Sequence[str], ratios: Sequence[float], pruner: str,
                         nm: tuple[int, int] | None = None) -> dict:
    """The recipe as a dict: one sparsity per decoder block, targets = exactly those blocks; with
    per-matrix ratios ({linear name: ratio} per block), targets = each matrix by its module name
    and sparsity = {module name: ratio} (llm-compressor prunes each target module at its own)."""
    check_exportable(pruner)
    if len(ratios) != len(block_names):
        raise UserError(f"got {len(ratios)} ratios for {len(block_names)} blocks")
    container = _container(block_names)
    if is_per_matrix(ratios):
        if nm:
            raise UserError(f"{nm[0]}:{nm[1]} prunes every matrix to the same pattern: per-matrix ratios do not apply")
        sparsity = {f"{block}.{name}": float(r) for block, entry in zip(block_names, ratios) for name, r in entry.items()}
        args = {"sparsity": sparsity, "mask_structure": "0:0", "targets": list(sparsity), "ignore": ["re:.*lm_head"]}
        return {STAGE: {GROUP: {MODIFIERS[pruner]: args | (SPARSEGPT_ARGS if pruner == "sparsegpt" else {})}}}
    if nm:  # this project prunes every block N:M whatever its ratio; so does llm-compressor
        sparsity = [1.0 - nm[0] / nm[1]] * len(block_names)
    else:
        sparsity = [float(r) for r in ratios]
    args = {
        "sparsity": sparsity,
        "mask_structure": f"{nm[0]}:{nm[1]}" if nm else "0:0",
        "targets": [f"re:^{re.escape(container)}\\.\\d+$"],
        "ignore": ["re:.*lm_head"],
    }
    if pruner == "sparsegpt":
        args.update(SPARSEGPT_ARGS)
    return {STAGE: {GROUP: {MODIFIERS[pruner]: args}}}


def recipe_sparsities(recipe: dict) -> tuple[str, dict]:
    """(modifier name, its arguments) of a recipe written by llmcompressor_recipe."""
    (name, args), = recipe[STAGE][GROUP].items()
    return name, args


def write_recipe(path, recipe: dict, header: Sequence[str] = ()) -> Path:
    """YAML (or JSON when the name ends in .json), both readable by Recipe.create_instance."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return atomic_write_text(path, json.dumps(recipe, indent=2) + "\n")
    try:
        import yaml
    except ImportError:
        raise UserError("writing a YAML recipe needs PyYAML: pip install pyyaml (or name the file .json)")
    comments = "".join(f"# {line}\n" for line in header)
    return atomic_write_text(path, comments + yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None, width=100))
