"""Everything one model needs for many evaluations, loaded once: model, calibration, pruner, texts.

The search, the baselines and apply.py all stand on this object; it holds the dense weights and
the cached score orders so that each candidate costs one re-prune and one perplexity pass.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch

from .calibration import input_norms, layer_key, row_orders
from .data import token_windows
from .errors import UserError
from .models import load_model
from .perplexity import perplexity, window_nll
from .pruning import Pruner, block_sizes
from .scores import score_matrix


@dataclass(frozen=True)
class BenchConfig:
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


class Workbench:
    def __init__(self, config: BenchConfig):
        if config.metric not in ("wanda", "magnitude"):
            raise UserError(f"unknown metric {config.metric!r}: use wanda or magnitude")
        self.config = config
        self.loaded = load_model(config.model, config.device, config.dtype)
        context = getattr(self.loaded.model.config, "max_position_embeddings", None)
        if context and config.seqlen > context:
            raise UserError(f"--seqlen {config.seqlen} is beyond {config.model}'s context of {context} tokens")
        self.calib = token_windows(self.loaded.tokenizer, config.calib_text, config.seqlen, config.calib_windows)
        self.norms = input_norms(self.loaded, self.calib, config.calib_text, config.batch_size)
        self.sizes = block_sizes(self.loaded)

    @functools.cached_property
    def pruner(self) -> Pruner:
        orders = row_orders(self.loaded, self.norms, self.config.metric)
        return Pruner(self.loaded, orders, self.norms, self.config.metric)

    @property
    def blocks(self):
        return self.loaded.blocks

    def windows(self, text: str, count: int) -> torch.Tensor:
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
