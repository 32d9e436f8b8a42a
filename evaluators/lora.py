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
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .models import find_blocks

CHECKPOINT_NAME = "lora_checkpoint.safetensors"
FORMAT_VERSION = 1


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

    Returns {"steps", "resumed_from", "losses", "seconds_per_step", "trainable_params",
    "modules", "delta_removed_fraction", "remasked"}; losses and seconds cover every step, those before a
    resume included (read back from the checkpoint).
    """
    from peft import LoraConfig, get_peft_model

    if steps < 0 or batch_size < 1 or checkpoint_every < 1:
        raise ValueError("need steps >= 0, batch_size >= 1 and checkpoint_every >= 1")
    if windows.dim() != 2 or len(windows) == 0:
        raise ValueError("windows must be a non-empty [count, seqlen] tensor of token ids")
    modules = target_modules(model, target)
    layers = {name: model.get_submodule(name) for name in modules}
    nonzeros = {name: int(layer.weight.count_nonzero()) for name, layer in layers.items()}
    settings = {
        "version": FORMAT_VERSION, "rank": rank, "alpha": alpha, "lr": lr, "batch_size": batch_size,
        "dropout": dropout, "weight_decay": weight_decay, "max_grad_norm": max_grad_norm, "seed": seed,
        "modules": _digest("\n".join(modules).encode()), "windows": _windows_digest(windows),
        "model": _model_digest(layers),
    }
    path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    saved = _read_checkpoint(path, settings) if path is not None and path.exists() else None
    start = saved["step"] if saved else 0
    if start > steps:
        raise ValueError(f"{path} is at step {start}, beyond the {steps} steps asked for")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)

    device = next(model.parameters()).device
    was_training = model.training
    rng_devices = [device] if device.type == "cuda" else []
    losses = list(saved["losses"]) if saved else []
    seconds = list(saved["seconds"]) if saved else []
    bar = None
    with torch.random.fork_rng(devices=rng_devices):  # the caller's RNG streams stay untouched
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules,
                            bias="none")
        with warnings.catch_warnings():  # PEFT asks transformers a deprecated question
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(model, config)
        try:
            params = {n: p for n, p in model.named_parameters() if p.requires_grad}
            optimizer = torch.optim.AdamW(params.values(), lr=lr, weight_decay=weight_decay)
            if saved:
                _restore(saved["tensors"], params, optimizer, device)
            model.train()
            bar = tqdm(total=steps, initial=start, desc="lora", disable=not progress, dynamic_ncols=True)
            for step in range(start, steps):
                began = time.perf_counter()
                ids = windows[_batch_indices(step, batch_size, len(windows), seed)].to(device)
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {step + 1}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params.values(), max_grad_norm)
                optimizer.step()
                losses.append(loss.item())
                seconds.append(time.perf_counter() - began)
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                done = step + 1
                if path is not None and (done % checkpoint_every == 0 or done == steps):
                    _write_checkpoint(path, params, optimizer, done, losses, seconds, settings, rng_devices)
                if on_step is not None:
                    on_step(done, losses[-1])
            del optimizer
            removed = _merge(model, modules, nonzeros, remask)
        finally:
            if bar is not None:
                bar.close()
            # Take the adapters off: after _merge they live in the weights; if interrupted, the
            # base weights are as they were (frozen), and the checkpoint keeps the adapters.
            peft_model.unload()
            model.train(was_training)
    for name, layer in layers.items():
        if model.get_submodule(name) is not layer:
            raise RuntimeError(f"{name} was not restored to its original module")
    return {"steps": steps, "resumed_from": start, "losses": losses, "seconds_per_step": seconds,
            "trainable_params": sum(p.numel() for p in params.values()), "modules": len(modules),
            "delta_removed_fraction": removed, "remasked": remask}


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"dsa_lora": json.dumps(meta)})
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)  # only the temporary file this call created
        raise


def _read_checkpoint(path: Path, settings: dict) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        meta = (handle.metadata() or {}).get("dsa_lora")
        if meta is None:
            raise ValueError(f"{path} is not a LoRA checkpoint of this tool")
        meta = json.loads(meta)
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    differ = sorted(k for k in set(settings) | set(meta["settings"]) if settings.get(k) != meta["settings"].get(k))
    if differ:
        raise ValueError(f"{path} holds a run with other settings ({', '.join(differ)} differ); "
                         "use another checkpoint_dir or the same model, windows and settings")
    if not (len(meta["losses"]) == len(meta["seconds"]) == meta["step"]):
        raise ValueError(f"{path} is inconsistent (step {meta['step']}, {len(meta['losses'])} losses)")
    return {**meta, "tensors": tensors}


def _restore(tensors: dict[str, torch.Tensor], params, optimizer, device) -> None:
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


__all__ = ["finetune_lora", "target_modules", "CHECKPOINT_NAME"]
