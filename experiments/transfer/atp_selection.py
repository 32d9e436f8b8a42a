"""Which ATP lambda two training models choose for a third, under the final pruner, by two rules.

    python experiments/transfer/atp_selection.py results/loo-qwen-60 results/loo-gemma-60 results/loo-smollm-60 \
        --own-atp qwen2.5-0.5b=results/atp-own-qwen2.5-0.5b-60 gemma3-270m=results/atp-own-gemma3-270m-60 \
        smollm2-135m=results/atp-own-smollm2-135m-60

Each `apply.py compare --allocations atp` folder holds one model's ATP grid: the final pruner's
validation perplexity at every lambda. The search reports give each model's uniform perplexity on
the same windows. For every leave-one-out rotation this prints the lambda the training models
choose with the multi-model score (mean of log(ppl / uniform)) and with the worst training model's
log ratio instead, and the held-out model's validation perplexity at each, beside its own best.
Nothing is pruned here: it re-reads measured numbers.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def grid_of(folder: Path, sparsity: float) -> dict[float, float]:
    choices = json.loads((folder / "atp.json").read_text())
    choice = next(c for s, c in choices.items() if abs(float(s) - sparsity) < 1e-9)
    text = choice["chosen_on"]
    return {point["lambda"]: point[text] for point in choice["grid"]}


def uniform_of(reports: list[Path], model: str, sparsity: float) -> float:
    for folder in reports:
        report = json.loads((folder / "report.json").read_text())
        table = report["targets"].get(f"{model}@{sparsity:g}")
        if table and "uniform" in table["allocations"]:
            return table["allocations"]["uniform"]["final"][report["config"]["fitness_text"]]
    raise SystemExit(f"no report gives uniform on {model} at {sparsity:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="search result folders with uniform on each model")
    parser.add_argument("--own-atp", nargs="+", required=True, metavar="MODEL=DIR",
                        help="apply.py compare --allocations atp folders, one per model")
    parser.add_argument("--sparsity", type=float, default=0.6)
    args = parser.parse_args()
    grids = {spec.split("=", 1)[0]: grid_of(Path(spec.split("=", 1)[1]), args.sparsity) for spec in args.own_atp}
    uniform = {model: uniform_of(args.reports, model, args.sparsity) for model in grids}
    print("| held-out | trained on | lambda: mean rule | lambda: worst-model rule | held-out at mean's | "
          "held-out at worst's | held-out's own best | held-out uniform |")
    print("|---|---|---|---|---|---|---|---|")
    for held in grids:
        trained = [m for m in grids if m != held]
        lambdas = sorted(set.intersection(*(set(grids[m]) for m in grids)))
        ratios = {lam: [math.log(grids[m][lam] / uniform[m]) for m in trained] for lam in lambdas}
        mean = min(lambdas, key=lambda lam: sum(ratios[lam]) / len(trained))
        worst = min(lambdas, key=lambda lam: max(ratios[lam]))
        own = min(lambdas, key=grids[held].get)
        print(f"| {held} | {', '.join(trained)} | {mean:g} | {worst:g} | {grids[held][mean]:.2f} | "
              f"{grids[held][worst]:.2f} | {grids[held][own]:.2f} ({own:g}) | {uniform[held]:.2f} |")


if __name__ == "__main__":
    main()
