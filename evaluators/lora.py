"""LoRA fine-tuning of a pruned model, with its zeros kept (recovery as AlphaPruning suggests).

    stats = finetune_lora(model, windows, steps=100, checkpoint_dir="runs/lora")

Low-rank adapters (PEFT LoRA) go on every linear layer of the decoder blocks (found
structurally by `find_blocks`, so q/k/v/o/gate/up/down on LLaMA-like models); all base weights
stay frozen. Training is plain next-token loss on the given token windows, AdamW at a constant
learning rate, gradient norm clipped.

How the zeros are kept: the adapters' update B @ A is dense, so during training the model is
the pruned weights plus a dense low-rank term. At the end each adapter is merged into its
weight (W + scale * B @ A) and the pruning mask (W != 0) is applied again, so the model is
modified in place into a plain, equally sparse HF model (the same nn.Linear objects, no PEFT
wrappers left) that saves and evaluates like any other. The mask is the one the weights had
before training: the base weights are frozen, so it is read from them layer by layer at merge
time (one mask in memory at a time) and checked against the zero counts recorded at the start.
Re-masking drops the part of the update that falls on pruned positions; the returned
`delta_removed_fraction` says how much of its squared norm that was (about the sparsity).

Checkpoints (`checkpoint_dir`): every `checkpoint_every` steps and at the last step one
safetensors file holds the adapter weights, the AdamW state, the RNG states and, as JSON in its
metadata, the step, the losses and the settings. It is written to a temporary file in the same
directory and moved into place with os.replace, so a crash leaves the previous checkpoint
whole. Called again with the same directory, settings and model, the run resumes at the saved
step and ends with the same weights as an uninterrupted run. Nothing is pickled.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from dsa.core.errors import UserError
from dsa.core.storage import atomic_write

from .models import find_blocks

CHECKPOINT_NAME = "lora_checkpoint.safetensors"
FORMAT_VERSION = 1


class LoraError(UserError, ValueError):
    """Arguments that cannot train, or a checkpoint of another run (or damaged): one line to a user."""


def target_modules(model: torch.nn.Module, target: Iterable[str] | None = None) -> list[str]:
    """Full module paths of the block linear layers to adapt.

    `target` None: every linear layer of every decoder block. Otherwise names (or name suffixes)
    of linear layers inside a block, e.g. ["q_proj", "v_proj"] or ["self_attn.o_proj"].
    """
    wanted = None if target is None else list(target)
    names = []
    for block in find_blocks(model):
        for name in block.linears:
            if wanted is None or any(name == t or name.endswith("." + t) for t in wanted):
                names.append(f"{block.name}.{name}")
    if not names:
        raise ValueError(f"no decoder-block linear layer matches target={wanted}")
    return names


def finetune_lora(model: torch.nn.Module, windows: torch.Tensor, steps: int, *, rank: int = 8,
                  alpha: float = 16, lr: float = 1e-4, batch_size: int = 2,
                  target: Sequence[str] | None = None, dropout: float = 0.0, weight_decay: float = 0.0,
                  max_grad_norm: float | None = 1.0, checkpoint_dir: str | os.PathLike | None = None,
                  checkpoint_every: int = 10, seed: int = 0, progress: bool = True,
                  remask: bool = True, on_step: Callable[[int, float], None] | None = None) -> dict:
    """Fine-tune LoRA adapters on `windows`, merge them and re-apply the pruning mask, in place.

    model: a (pruned) HF causal LM; its block linear layers' zeros are kept exactly.
    windows: [count, seqlen] token ids; step s trains on `batch_size` of them, taken in a
        seeded random order, epoch after epoch.
    steps: total optimizer steps (a resumed run counts the steps already done).
    remask: False merges the adapters without re-applying the mask (a dense model, the same
        function as pruned weights + adapters); only to measure what re-masking costs.
    on_step(step, loss): called after every step (1-based); raising from it interrupts the run
        (the model is then left unmerged and as it was, the last checkpoint kept).

    Returns {"steps", "resumed_from", "losses", "seconds_per_step", "trainable_params", "modules",
    "delta_removed_fraction", "remasked"}; losses and seconds cover every step, a resumed run's
    earlier ones too. Bad arguments or a checkpoint of another run: LoraError (one line to users).
    """
    if steps < 0 or batch_size < 1 or checkpoint_every < 1 or windows.dim() != 2 or len(windows) == 0:
        raise LoraError("need steps >= 0, batch_size >= 1, checkpoint_every >= 1 and windows a non-empty "
                        "[count, seqlen] tensor of token ids")
    modules = target_modules(model, target)
    layers = {name: model.get_submodule(name) for name in modules}
    nonzeros = {name: int(layer.weight.count_nonzero()) for name, layer in layers.items()}
    settings = {"version": FORMAT_VERSION, "rank": rank, "alpha": alpha, "lr": lr, "batch_size": batch_size,
                "dropout": dropout, "weight_decay": weight_decay, "max_grad_norm": max_grad_norm, "seed": seed,
                **_identity(modules, windows, layers)}
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    saved = _saved_run(path, settings, steps)
    device = next(model.parameters()).device
    was_training = model.training
    run = _Run(path, settings, steps, checkpoint_every, [device] if device.type == "cuda" else [], saved)
    with torch.random.fork_rng(devices=run.rng_devices):  # the caller's RNG streams stay untouched
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        peft_model = _with_adapters(model, modules, rank, alpha, dropout)
        try:
            params = {n: p for n, p in model.named_parameters() if p.requires_grad}
            optimizer = torch.optim.AdamW(params.values(), lr=lr, weight_decay=weight_decay)
            if saved:
                _restore(path, saved["tensors"], params, optimizer, device)
            _train(model, params, optimizer, windows, batch_size, max_grad_norm, run, progress, on_step)
            del optimizer
            removed = _merge(model, modules, nonzeros, remask)
        finally:
            # Take the adapters off: after _merge they live in the weights; if interrupted, the
            # base weights are as they were (frozen), and the checkpoint keeps the adapters.
            peft_model.unload()
            model.train(was_training)
    if any(model.get_submodule(name) is not layer for name, layer in layers.items()):
        raise RuntimeError("a fine-tuned layer was not restored to its original module")
    return {"steps": steps, "resumed_from": run.start, "losses": run.losses, "seconds_per_step": run.seconds,
            "trainable_params": sum(p.numel() for p in params.values()), "modules": len(modules),
            "delta_removed_fraction": removed, "remasked": remask}


def _with_adapters(model, modules: list[str], rank: int, alpha: float, dropout: float):
    """The model with fresh LoRA adapters on `modules` (drawn from the current RNG), wrapped by PEFT."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules, bias="none")
    with warnings.catch_warnings():  # PEFT asks transformers a deprecated question
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


class _Run:
    """Where a fine-tuning run stands: its checkpoint file and settings, the steps asked for, the
    step it starts at and the losses and step times so far (a resumed run's included)."""

    def __init__(self, path: Path | None, settings: dict, steps: int, every: int, rng_devices: list,
                 saved: dict | None):
        self.path, self.settings, self.steps, self.every, self.rng_devices = path, settings, steps, every, rng_devices
        self.start = saved["step"] if saved else 0
        self.losses = list(saved["losses"]) if saved else []
        self.seconds = list(saved["seconds"]) if saved else []

    def checkpoint_due(self, done: int) -> bool:
        return self.path is not None and (done % self.every == 0 or done == self.steps)


def _saved_run(path: Path | None, settings: dict, steps: int) -> dict | None:
    """The checkpoint to resume from (None: start at step 0), checked against this run."""
    if path is None:
        return None
    saved = _read_checkpoint(path, settings) if path.exists() else None
    if saved and saved["step"] > steps:
        raise LoraError(f"{path} is at step {saved['step']}, beyond the {steps} steps asked for; ask for "
                        f"{saved['step']} or more, or use another checkpoint directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    return saved


def _train(model, params: dict, optimizer, windows: torch.Tensor, batch_size: int, max_grad_norm: float | None,
           run: _Run, progress: bool, on_step) -> None:
    """The optimizer steps from `run.start` to `run.steps`, checkpointed as `run` says."""
    device = next(model.parameters()).device
    model.train()
    with tqdm(total=run.steps, initial=run.start, desc="lora", disable=not progress, dynamic_ncols=True) as bar:
        for step in range(run.start, run.steps):
            began = time.perf_counter()
            ids = windows[_batch_indices(step, batch_size, len(windows), run.settings["seed"])].to(device)
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params.values(), max_grad_norm)
            optimizer.step()
            run.losses.append(loss.item())
            run.seconds.append(time.perf_counter() - began)
            bar.update(1)
            bar.set_postfix(loss=f"{run.losses[-1]:.4f}")
            done = step + 1
            if run.checkpoint_due(done):
                _write_checkpoint(run.path, params, optimizer, done, run.losses, run.seconds, run.settings,
                                  run.rng_devices)
            if on_step is not None:
                on_step(done, run.losses[-1])


@torch.no_grad()
def _merge(model, modules: list[str], nonzeros: dict[str, int], remask: bool) -> float:
    """Add each adapter's update (scale * B @ A) to its frozen base weight, then zero the pruned
    positions again; layer by layer, so only one mask is held at a time.

    The mask is read from the base weight just before the merge: frozen during training, it is
    the weight recorded at the start (its zero count is checked). Returns the share of the
    updates' squared norm that fell on pruned positions (dropped by re-masking).
    """
    total = removed = 0.0
    for name in modules:
        layer = model.get_submodule(name)
        base = layer.get_base_layer()
        mask = base.weight != 0
        if int(mask.sum()) != nonzeros[name]:
            raise RuntimeError(f"the frozen weight of {name} changed during fine-tuning")
        delta = sum(layer.get_delta_weight(adapter) for adapter in layer.active_adapters)
        total += delta.float().square().sum().item()
        removed += delta[~mask].float().square().sum().item()
        base.weight.add_(delta.to(base.weight.dtype))
        if remask:
            base.weight.masked_fill_(~mask, 0.0)
    return removed / total if total > 0 else 0.0


def _batch_indices(step: int, batch_size: int, count: int, seed: int) -> torch.Tensor:
    """Windows of a step: a seeded permutation per epoch, from (seed, epoch) alone (resumable)."""
    out = []
    for sample in range(step * batch_size, (step + 1) * batch_size):
        epoch, position = divmod(sample, count)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(int(order[position]))
    return torch.tensor(out)


# ---- checkpoints ----------------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _identity(modules: list[str], windows: torch.Tensor, layers: dict) -> dict:
    """What a checkpoint must have been trained on to be resumed: these layers, windows, weights."""
    return {"modules": _digest("\n".join(modules).encode()), "windows": _windows_digest(windows),
            "model": _model_digest(layers)}


def _windows_digest(windows: torch.Tensor) -> str:
    return f"{tuple(windows.shape)}:{_digest(windows.detach().cpu().long().contiguous().numpy().tobytes())}"


def _model_digest(layers: dict[str, torch.nn.Module]) -> str:
    """Identity of the starting weights: a strided sample of each matrix and its zero count."""
    digest = hashlib.sha256()
    for name, layer in layers.items():
        weight = layer.weight.detach()
        digest.update(f"{name}:{int((weight == 0).sum())}".encode())
        digest.update(weight.flatten()[::7919].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _write_checkpoint(path: Path, params, optimizer, step: int, losses, seconds, settings, rng_devices) -> None:
    tensors = {f"adapter/{n}": p.detach().cpu().clone().contiguous() for n, p in params.items()}
    state = optimizer.state_dict()["state"]
    for index, name in enumerate(params):
        for key, value in state.get(index, {}).items():
            tensors[f"optimizer/{name}/{key}"] = torch.as_tensor(value).detach().cpu().clone().contiguous()
    tensors["rng/cpu"] = torch.get_rng_state()
    for device in rng_devices:
        tensors["rng/cuda"] = torch.cuda.get_rng_state(device).cpu()
    meta = {"step": step, "losses": losses, "seconds": seconds, "settings": settings}
    # Whole or not at all: a kill while writing leaves the previous checkpoint in place.
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"dsa_lora": json.dumps(meta)}))


def _read_checkpoint(path: Path, settings: dict) -> dict:
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = (handle.metadata() or {}).get("dsa_lora")
            if meta is None:
                raise LoraError(f"{path} is not a LoRA checkpoint of this tool; use another checkpoint directory")
            meta = json.loads(meta)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except LoraError:
        raise
    except Exception as err:  # safetensors' own error for a cut or damaged file, bad JSON
        raise LoraError(f"{path} cannot be read ({err.__class__.__name__}: {str(err)[:80]}); remove it or use "
                        "another checkpoint directory")
    _check_meta(path, meta)
    differ = sorted(k for k in set(settings) | set(meta["settings"]) if settings.get(k) != meta["settings"].get(k))
    if differ:
        raise LoraError(f"{path} holds a run with other settings ({', '.join(differ)} differ); "
                        "use another checkpoint directory, or the same model, windows and settings to resume it")
    return {**meta, "tensors": tensors}


def _check_meta(path: Path, meta) -> None:
    """A checkpoint's step, losses and times by type and range before they are counted or summed."""
    def finite(values):
        return isinstance(values, list) and all(type(v) in (int, float) and math.isfinite(v) for v in values)

    if not (isinstance(meta, dict) and isinstance(meta.get("settings"), dict) and type(meta.get("step")) is int
            and abs(meta["step"]) < 2 ** 63 and finite(meta.get("losses")) and finite(meta.get("seconds"))):
        raise LoraError(f"{path} is not a LoRA checkpoint of this tool (its step, losses or settings are not "
                        "what one holds); remove it or use another checkpoint directory")
    if not (0 <= meta["step"] == len(meta["losses"]) == len(meta["seconds"])):
        raise LoraError(f"{path} is inconsistent (step {meta['step']}, {len(meta['losses'])} losses)")


def _restore(path: Path, tensors: dict[str, torch.Tensor], params, optimizer, device) -> None:
    """Adapters, AdamW state and RNG as the checkpoint holds them; one that does not fit this
    run's adapters (its settings matched, its tensors were changed) is refused in one line."""
    try:
        _load_tensors(tensors, params, optimizer, device)
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        raise LoraError(f"{path} does not fit this run ({str(err)[:80]}); remove it or use another checkpoint directory")


def _load_tensors(tensors: dict[str, torch.Tensor], params, optimizer, device) -> None:
    with torch.no_grad():
        for name, param in params.items():
            key = f"adapter/{name}"
            if key not in tensors or tensors[key].shape != param.shape:
                raise ValueError(f"checkpoint lacks adapter weight {name} or its shape differs")
            param.copy_(tensors[key])
    state = {}
    for index, name in enumerate(params):
        prefix = f"optimizer/{name}/"
        entry = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if entry:
            state[index] = entry
    full = optimizer.state_dict()
    full["state"] = state
    optimizer.load_state_dict(full)  # moves and casts to the parameters' device and dtype
    torch.set_rng_state(tensors["rng/cpu"])
    if device.type == "cuda" and "rng/cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)


__all__ = ["finetune_lora", "target_modules", "CHECKPOINT_NAME", "LoraError"]
