"""Everything one model needs for many evaluations, loaded once: model, calibration, pruner, texts.

The search, the baselines and apply.py all stand on this object; it holds the dense weights and
the cached score orders so that each candidate costs one re-prune and one perplexity pass.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import assets
from .calibration import input_norms, layer_key, row_orders
from .data import BUILTIN_TEXTS, CALIB_NEXT, ONLINE_TEXTS, check_online, load_text, token_windows
from dsa.core.errors import UserError
from .models import default_device_dtype, load_model, resolve
from .perplexity import perplexity, window_nll
from .pruners import CachedPruner, block_sizes
from .scores import score_matrix


@dataclass(frozen=True)
class ModelConfig:
    """What defines the evaluation setting; every field is a command-line flag."""

    model: str = "smollm2-135m"
    metric: str = "wanda"          # element-wise score: wanda or magnitude
    calib_text: str = "c4/train"
    calib_windows: int = 16        # 16 x 512 tokens: a CPU-friendly fraction of Wanda's 128 x 2048
    seqlen: int = 512              # short windows keep a CPU forward pass in seconds
    batch_size: int = 4
    device: str | None = None
    dtype: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def check_config(config: ModelConfig, here: bool = True) -> None:
    """Refuse a bad setting in one line before anything is loaded, or any Ray worker started.

    `here`: the model will load on this machine, so its device must exist here and the model and
    text paths are this machine's. Otherwise (a Ray cluster) only the names are checked; each
    worker checks the rest on its own machine (CalibratedModel does)."""
    if config.metric not in ("wanda", "magnitude"):
        raise UserError(f"unknown metric {config.metric!r}: use wanda or magnitude")
    check_device(config.device, here)
    default_device_dtype("cpu", config.dtype)  # the dtype's name only: no device is touched
    if here:
        check_model(config.model)
        check_text(config.calib_text)


def check_device(spec: str | None, here: bool = True) -> None:
    if spec is None:
        return
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device {spec!r}: use cpu, cuda or cuda:N")
    if not here or device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)
    count = backend.device_count() if hasattr(backend, "device_count") else 0
    if count == 0:
        raise UserError(f"--device {spec}: no {device.type} device here")
    if device.index is not None and device.index >= count:
        raise UserError(f"--device {spec}: only {count} {device.type} device(s) here")


def check_model(spec: str) -> None:
    """What resolving the model can tell without loading weights: a built-in alias, an existing
    .gguf file or Hugging Face directory, or a hub id's shape (whether the hub has it is known
    only by trying, on the machine that loads it)."""
    if spec in assets.BUILTIN_MODELS:
        return  # resolving it may convert its GGUF: the workers do that
    if spec.endswith(".gguf"):  # resolving it would convert it here
        if not Path(spec).expanduser().is_file():
            raise UserError(f"missing file: {spec}")
    else:
        resolve(spec)


def check_text(name: str) -> None:
    """A text's name; a local file is read (cached) to check it is UTF-8 text. Built-in and
    online texts are known names: not loaded here."""
    if name in ONLINE_TEXTS and not Path(name).expanduser().exists():
        check_online(name)
        return
    if name in BUILTIN_TEXTS + [CALIB_NEXT] and not Path(name).expanduser().exists():
        return
    load_text(name)


class CalibratedModel:
    """One model loaded and calibrated once: its cached pruner, dense weights and text windows."""

    def __init__(self, config: ModelConfig):
        check_config(config)  # here, where the model loads: its device, paths and texts
        self.config = config
        self.loaded = load_model(config.model, config.device, config.dtype)
        context = getattr(self.loaded.model.config, "max_position_embeddings", None)
        if context and config.seqlen > context:
            raise UserError(f"--seqlen {config.seqlen} is beyond {config.model}'s context of {context} tokens")
        self.calib = token_windows(self.loaded.tokenizer, config.calib_text, config.seqlen, config.calib_windows)
        self.norms = input_norms(self.loaded, self.calib, config.calib_text, config.batch_size)
        self.sizes = block_sizes(self.loaded)

    @functools.cached_property
    def pruner(self) -> CachedPruner:
        orders = row_orders(self.loaded, self.norms, self.config.metric)
        return CachedPruner(self.loaded, orders, self.norms, self.config.metric)

    @property
    def blocks(self):
        return self.loaded.blocks

    def windows(self, text: str, count: int) -> torch.Tensor:
        """`count` windows of `text`; `calib-next` is the calibration text's next `count` windows
        after the calibration ones (disjoint from them by construction)."""
        if text == CALIB_NEXT and not Path(text).exists():
            skip = self.config.calib_windows
            return token_windows(self.loaded.tokenizer, self.config.calib_text, self.config.seqlen, skip + count)[skip:]
        return token_windows(self.loaded.tokenizer, text, self.config.seqlen, count)

    def perplexity(self, text: str, count: int, progress: str | None = None) -> float:
        return perplexity(self.loaded.model, self.windows(text, count), self.config.batch_size, progress)

    def window_nll(self, windows: torch.Tensor) -> torch.Tensor:
        return window_nll(self.loaded.model, windows, self.config.batch_size)

    def dense_weights(self, block_index: int) -> list[torch.Tensor]:
        """The block's dense weight matrices (from the pruner's copy once it exists)."""
        block = self.blocks[block_index]
        if "pruner" in self.__dict__:
            return [self.pruner.dense[layer_key(block.index, n)] for n in block.linears]
        return [layer.weight.detach() for layer in block.linears.values()]

    def block_scores(self, block_index: int, metric: str | None = None) -> list[torch.Tensor]:
        """The block's element-wise pruning scores, one matrix per linear layer (dense weights)."""
        metric = metric or self.config.metric
        block = self.blocks[block_index]
        return [score_matrix(w, self.norms.get(layer_key(block.index, n)), metric)
                for n, w in zip(block.linears, self.dense_weights(block_index))]
