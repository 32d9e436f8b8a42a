"""LoRA recovery after pruning: perplexity before and after fine-tuning, and seconds per step.

    python experiments/lora/lora.py --model smollm2-135m --sparsity 0.7 --allocation uniform --steps 60
    python experiments/lora/lora.py --ratios-json results/owl70.json --steps 60   # ratios from apply.py --json
    python experiments/lora/lora.py --function results/default70/best.json --steps 60  # a searched function

Prunes with faithful sequential Wanda (the final pruner of apply.py), measures wiki/test
perplexity, fine-tunes LoRA adapters on C4 train windows (the first ones are the calibration
windows; all are disjoint from wiki/test), merges them and re-applies the mask
(evaluators.lora), and measures again. With --unmasked it also measures the same adapters
merged without the mask (pruned weights + dense low-rank update: what re-masking costs).
"""
import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from dsa.allocation.allocate import baseline_ratios  # noqa: E402
from dsa.functions.replay import function_ratios, load_function  # noqa: E402
from dsa.core.storage import atomic_write_text  # noqa: E402
from evaluators.data import token_windows  # noqa: E402
from evaluators.lora import finetune_lora  # noqa: E402
from evaluators.perplexity import perplexity  # noqa: E402
from evaluators.pruners import zero_fraction  # noqa: E402
from evaluators.session import EvaluationSession  # noqa: E402
from evaluators.calibrated import ModelConfig, CalibratedModel  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--allocation", default="uniform", help="baseline allocation (uniform, owl, alphapruning, ...)")
    parser.add_argument("--ratios-json", help="per-block ratios: a JSON list, or an object with 'ratios' (apply.py --json)")
    parser.add_argument("--function", help="a function file (search.py's best.json), replayed at --sparsity")
    parser.add_argument("--pruner", default="wanda", choices=["wanda", "sparsegpt", "magnitude"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seqlen", type=int, default=256, help="fine-tuning window length")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--train-windows", type=int, default=128, help="C4 train windows to cycle through")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-text", default="wiki/test")
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--checkpoint-dir", help="resumable; a temporary directory when not given")
    parser.add_argument("--unmasked", action="store_true", help="also measure the adapters merged without the mask")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/bench_lora.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    calibrated = CalibratedModel(ModelConfig(model=args.model))
    session = EvaluationSession(calibrated)
    if args.ratios_json:
        data = json.loads(Path(args.ratios_json).read_text())
        ratios = [float(r) for r in (data["ratios"] if isinstance(data, dict) else data)]
        label = args.ratios_json
    elif args.function:
        ratios, _ = function_ratios(load_function(args.function), session.block_matrices, session.n_blocks,
                                    session.sizes, args.sparsity)
        label = args.function
    else:
        ratios, _ = baseline_ratios(args.allocation, calibrated, args.sparsity)
        label = args.allocation
    evaluate = calibrated.windows(args.eval_text, args.eval_windows)
    model = calibrated.loaded.model

    def ppl(m):
        return perplexity(m, evaluate, calibrated.config.batch_size, progress=f"ppl {args.eval_text}")

    dense = ppl(model)
    start = time.perf_counter()
    achieved = session.prune(ratios, args.pruner)
    prune_s = time.perf_counter() - start
    before = ppl(model)
    print(f"{label} {args.pruner}: sparsity {achieved:.4f}, {args.eval_text} ppl dense {dense:.2f}, pruned {before:.2f}")

    train = token_windows(calibrated.loaded.tokenizer, "c4/train", args.seqlen, args.train_windows)
    pruned = copy.deepcopy(model) if args.unmasked else None
    options = dict(rank=args.rank, alpha=args.alpha, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = args.checkpoint_dir or tmp
        start = time.perf_counter()
        stats = finetune_lora(model, train, args.steps, checkpoint_dir=checkpoints, **options)
        total_s = time.perf_counter() - start
        calibrated.pruner.mark_modified()  # the weights changed outside the pruner
        unmasked = None
        if pruned is not None:  # resumes at the last step: the same adapters, merged densely
            finetune_lora(pruned, train, args.steps, checkpoint_dir=checkpoints, remask=False, progress=False, **options)
            unmasked = ppl(pruned)
            del pruned
    after = ppl(model)
    kept = zero_fraction(calibrated.loaded)
    new_steps = stats["seconds_per_step"][stats["resumed_from"]:]
    result = {
        "model": args.model, "allocation": label, "pruner": args.pruner, "sparsity": args.sparsity,
        "achieved_sparsity": achieved, "sparsity_after": kept, "eval_text": args.eval_text,
        "eval_windows": args.eval_windows, "eval_seqlen": calibrated.config.seqlen,
        "ppl_dense": dense, "ppl_pruned": before, "ppl_lora": after, "ppl_lora_unmasked": unmasked,
        "steps": args.steps, "resumed_from": stats["resumed_from"], "seqlen": args.seqlen,
        "batch_size": args.batch_size, "train_windows": args.train_windows, "rank": args.rank,
        "alpha": args.alpha, "lr": args.lr, "seed": args.seed, "threads": torch.get_num_threads(),
        "trainable_params": stats["trainable_params"], "modules": stats["modules"],
        "delta_removed_fraction": stats["delta_removed_fraction"],
        "seconds_per_step_median": sorted(new_steps)[len(new_steps) // 2] if new_steps else None,
        "seconds_per_step_mean": sum(new_steps) / len(new_steps) if new_steps else None,
        "finetune_seconds": total_s, "prune_seconds": prune_s,
        "losses": stats["losses"], "seconds_per_step": stats["seconds_per_step"],
    }
    calibrated.pruner.restore()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("losses", "seconds_per_step")}, indent=2))
    first, last = stats["losses"][:5], stats["losses"][-5:]
    print(f"loss: first 5 mean {sum(first) / len(first):.3f}, last 5 mean {sum(last) / len(last):.3f}")
    print(f"{args.eval_text} ppl: dense {dense:.2f}, pruned {before:.2f}, after LoRA (sparse) {after:.2f}"
          + (f", adapters unmerged-equivalent (dense) {unmasked:.2f}" if unmasked is not None else ""))


if __name__ == "__main__":
    main()
