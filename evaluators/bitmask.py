"""Sparse weights on disk in compressed-tensors' `sparse-bitmask` layout, and back.

Each pruned matrix W (R x C) is stored as four tensors beside its name, as compressed-tensors
0.14's BitmaskTensor writes them: `NAME.shape` (int64 [R, C]), `NAME.compressed` (the nonzero
values, row by row), `NAME.bitmask` (uint8 R x ceil(C/8), numpy.packbits of W != 0 along rows,
little bit order) and `NAME.row_offsets` (where each row's values start in `compressed`).
config.json carries the `quantization_config` that compressed-tensors <= 0.14 reads. Its later
releases refuse sparse configs and 0.14 needs transformers < 5, so this module also reads the
layout back itself (read_bitmask_model): a save loads with the stack dsa runs on.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FIELDS = ("shape", "compressed", "bitmask", "row_offsets")
FORMAT = "sparse-bitmask"
WEIGHTS_FILE = "model.safetensors"


def compress(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four tensors of one matrix (compressed-tensors' bitmask_compress)."""
    mask = weight != 0
    row_counts = mask.sum(dim=-1)
    return {"shape": torch.tensor(list(weight.shape)),
            "compressed": weight[mask].contiguous(),
            "bitmask": torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little")),
            "row_offsets": torch.cumsum(row_counts, 0) - row_counts}


def decompress(fields: dict[str, torch.Tensor]) -> torch.Tensor:
    shape = [int(n) for n in fields["shape"]]
    mask = np.unpackbits(fields["bitmask"].numpy(), axis=-1, count=shape[-1], bitorder="little")
    dense = torch.zeros(shape, dtype=fields["compressed"].dtype)
    dense[torch.from_numpy(mask.reshape(shape).astype(bool))] = fields["compressed"]
    return dense


def compress_file(directory: Path, weight_names: list[str], sparsity: float) -> None:
    """Rewrite a dense save's model.safetensors with `weight_names` in the bitmask layout and
    mark config.json as compressed-tensors does (sparsity_config, format sparse-bitmask)."""
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"{directory} holds no {WEIGHTS_FILE} (a sharded save); the bitmask layout needs one file")
    tensors = load_file(path)
    missing = [name for name in weight_names if name not in tensors]
    if missing:
        raise ValueError(f"{missing[0]} is not in the saved weights")
    for name in weight_names:
        stem = name[:-len(".weight")]
        tensors.update({f"{stem}.{key}": value for key, value in compress(tensors.pop(name)).items()})
    save_file(tensors, path, metadata={"format": "pt"})
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "version": "0.14.0.1", "transform_config": {},
        "sparsity_config": {"format": FORMAT, "global_sparsity": sparsity, "sparsity_structure": "unstructured",
                            "targets": sorted({name[:-len(".weight")] for name in weight_names}), "ignore": []}}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def is_bitmask_save(directory) -> bool:
    config = Path(directory) / "config.json"
    if not config.is_file():
        return False
    try:
        sparsity = json.loads(config.read_text()).get("quantization_config", {}).get("sparsity_config", {})
    except (ValueError, AttributeError):
        return False
    return isinstance(sparsity, dict) and sparsity.get("format") == FORMAT


def dense_state(directory) -> dict[str, torch.Tensor]:
    """Every tensor of a bitmask save, the compressed ones decompressed, by parameter name."""
    stored = load_file(Path(directory) / WEIGHTS_FILE)
    stems = {name[:-len(".bitmask")] for name in stored if name.endswith(".bitmask")}
    packed = {f"{stem}.{key}" for stem in stems for key in FIELDS}
    state = {name: value for name, value in stored.items() if name not in packed}
    for stem in stems:
        state[f"{stem}.weight"] = decompress({key: stored[f"{stem}.{key}"] for key in FIELDS})
    return state


def read_bitmask_model(directory, dtype):
    """A transformers model from a bitmask save: built from its config (without the compression
    entry, which transformers 5 would hand to compressed-tensors) and filled with the weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = dense_state(directory)
    dtype = dtype or next(iter(state.values())).dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()
    missing, unexpected = model.load_state_dict(state, strict=False)
    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    tied = output is not None and output.weight.data_ptr() == embedding.weight.data_ptr()
    untied = [name for name in missing if not (tied and name == "lm_head.weight")]  # save_pretrained drops a tied head
    if unexpected or untied:
        raise ValueError(f"{directory}: the save does not match its config ({(unexpected or untied)[0]}, ...)")
    return model
