"""Search modes compared over seeds, from the searches' reports.

    python experiments/search-modes/seed_table.py results/fn-0 results/fn-1 results/fn-2 results/pb-0 ... results/rnd-2

    python experiments/search-modes/seed_table.py results/loo-gemma-60 results/loo-gemma-60-evo-1 ... --target gemma3-270m@0.6

Each folder holds one `search.py` run's report.json (function search, `--per-block` or
`--random-search`). Runs are grouped by their search mode; each row gives, for the best
allocation of the first target (or of `--target`, e.g. a held-out model of multi-model
searches), the search's selection score (validation fitness; for several training models the
mean log ratio to uniform), the final pruner's validation and test perplexities, the
evaluations spent and the wall time, then the mean and the spread (population standard
deviation, and min-max) of each mode over its seeds.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def mode_of(report: dict) -> str:
    search = report["config"]["search"]
    if search.get("mode") == "per-block":
        return "per-block"
    return "random search" if search.get("random_search") else "function (evolution)"


def run_row(folder: Path, target: str | None = None) -> dict:
    report = json.loads((folder / "report.json").read_text())
    config = report["config"]
    if target is not None and target not in report["targets"]:
        raise SystemExit(f"{folder}/report.json has no target {target} (it has {', '.join(report['targets'])})")
    table = report["targets"][target] if target else next(iter(report["targets"].values()))
    # The selection score: one model's validation fitness, or several models' mean log ratio.
    several = len([t for t in report["targets"].values() if t.get("trained", True)]) > 1
    best = table["allocations"]["best"]["final"]
    uniform = table["allocations"].get("uniform", {}).get("final", {})
    test = config["report_texts"][0]
    return {"run": folder.name, "mode": mode_of(report), "seed": config["search"]["seed"],
            "fitness": report["history"][-1]["best"] if several else report["best"]["val_ppl"], "validation": best[config["fitness_text"]], "test": best[test],
            "uniform_test": uniform.get(test), "evaluations": report["evaluations"],
            "windows": report["windows_evaluated"], "search_s": report["wall_s"], "test_text": test}


def spread(values: list[float], digits: int = 2) -> str:
    between = " to " if min(values) < 0 else "-"  # a range of negative scores reads badly with a dash
    return (f"{statistics.mean(values):.{digits}f} ± {statistics.pstdev(values):.{digits}f} "
            f"({min(values):.{digits}f}{between}{max(values):.{digits}f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="search result folders (each with report.json)")
    parser.add_argument("--target", default=None, metavar="MODEL@SPARSITY",
                        help="the report target to tabulate, e.g. a held-out gemma3-270m@0.6 (default: the first)")
    args = parser.parse_args()
    rows = [run_row(folder, args.target) for folder in args.reports]
    test = rows[0]["test_text"]
    digits = 3 if abs(rows[0]["fitness"]) < 1 else 2
    print(f"| run | mode | seed | selection score (search's form) | wiki/validation (final pruner) "
          f"| {test} (final pruner) | evaluations | windows | search s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['mode']} | {r['seed']} | {r['fitness']:.{digits}f} | {r['validation']:.2f} "
              f"| {r['test']:.2f} | {r['evaluations']} | {r['windows']} | {r['search_s']:.0f} |")
    print()
    print(f"| mode | runs | selection score | wiki/validation (final) | {test} (final) | evaluations |")
    print("|---|---|---|---|---|---|")
    for mode in dict.fromkeys(r["mode"] for r in rows):
        group = [r for r in rows if r["mode"] == mode]
        print(f"| {mode} | {len(group)} | " + " | ".join(spread([r[k] for r in group], d) for k, d in
                                                        (("fitness", digits), ("validation", 2), ("test", 2)))
              + f" | {statistics.mean(r['evaluations'] for r in group):.0f} |")
    uniform = sorted({round(r["uniform_test"], 6) for r in rows if r["uniform_test"] is not None})
    if uniform:
        print(f"\nuniform on {test} (final pruner), as each report measured it: "
              + ", ".join(f"{u:.2f}" for u in uniform))


if __name__ == "__main__":
    main()
