"""Search modes compared over seeds, from the searches' reports.

    python bench/seed_table.py results/fn-0 results/fn-1 results/fn-2 results/pb-0 ... results/rnd-2

Each folder holds one `search.py` run's report.json (function search, `--per-block` or
`--random-search`). Runs are grouped by their search mode; each row gives, for the best
allocation of the first target, the search's validation fitness, the final pruner's validation
and test perplexities, the evaluations spent and the wall time, then the mean and the spread
(population standard deviation, and min-max) of each mode over its seeds.
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


def run_row(folder: Path) -> dict:
    report = json.loads((folder / "report.json").read_text())
    config = report["config"]
    table = next(iter(report["targets"].values()))
    best = table["allocations"]["best"]["final"]
    uniform = table["allocations"].get("uniform", {}).get("final", {})
    test = config["report_texts"][0]
    return {"run": folder.name, "mode": mode_of(report), "seed": config["search"]["seed"],
            "fitness": report["best"]["val_ppl"], "validation": best[config["fitness_text"]], "test": best[test],
            "uniform_test": uniform.get(test), "evaluations": report["evaluations"],
            "windows": report["windows_evaluated"], "search_s": report["wall_s"], "test_text": test}


def spread(values: list[float]) -> str:
    return (f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f} "
            f"({min(values):.2f}-{max(values):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="search result folders (each with report.json)")
    rows = [run_row(folder) for folder in parser.parse_args().reports]
    test = rows[0]["test_text"]
    print(f"| run | mode | seed | validation fitness (search's form) | wiki/validation (final pruner) "
          f"| {test} (final pruner) | evaluations | windows | search s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['mode']} | {r['seed']} | {r['fitness']:.2f} | {r['validation']:.2f} "
              f"| {r['test']:.2f} | {r['evaluations']} | {r['windows']} | {r['search_s']:.0f} |")
    print()
    print(f"| mode | runs | validation fitness | wiki/validation (final) | {test} (final) | evaluations |")
    print("|---|---|---|---|---|---|")
    for mode in dict.fromkeys(r["mode"] for r in rows):
        group = [r for r in rows if r["mode"] == mode]
        print(f"| {mode} | {len(group)} | " + " | ".join(spread([r[k] for r in group]) for k in
                                                        ("fitness", "validation", "test"))
              + f" | {statistics.mean(r['evaluations'] for r in group):.0f} |")
    uniform = sorted({round(r["uniform_test"], 6) for r in rows if r["uniform_test"] is not None})
    if uniform:
        print(f"\nuniform on {test} (final pruner), as each report measured it: "
              + ", ".join(f"{u:.2f}" for u in uniform))


if __name__ == "__main__":
    main()
