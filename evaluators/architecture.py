"""A model's decoder blocks from its configuration alone: the architecture built on the meta
device, so no weight is read or allocated (seconds, whatever the model's size).

What an allocation of depth (a function whose operand is `depth`, uniform, ER, ATP at a given step)
needs: the block count, each block's module path and its prunable parameter counts (and shapes).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dsa.core.errors import UserError
from .models import Block, find_blocks, load_config


@dataclass
class Layout:
    """The blocks of `model` as find_blocks finds them in a loaded model, their weights on the
    meta device (shapes only). Answers what a CalibratedModel answers about shapes: `blocks`,
    `sizes`, `n_blocks`; `block_matrices` refuses (no weights here)."""

    model: str
    blocks: list[Block]

    @property
    def sizes(self) -> torch.Tensor:
        """Prunable weights per block (float64), as evaluators.pruners.block_sizes."""
        return torch.tensor([float(b.size) for b in self.blocks], dtype=torch.float64)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def block_names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def block_matrices(self, operand: str, index: int) -> list[torch.Tensor]:
        raise RuntimeError(f"the {operand} operand needs the model's weights; a Layout holds only shapes")


def model_layout(spec: str) -> Layout:
    """The blocks of `spec` (a built-in alias, hub id, HF directory or .gguf file) from its config,
    built on the meta device."""
    from transformers import AutoModelForCausalLM

    config = load_config(spec)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as err:  # no causal-LM class for this configuration
        raise UserError(f"{spec}: cannot build its architecture from its configuration ({str(err)[:160]})")
    return Layout(spec, find_blocks(model))
