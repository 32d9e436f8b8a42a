"""A replayed function with its amplitude chosen on the new model, beside the fixed rules.

    python experiments/amplitude/amplitude_table.py --sparsity 0.6 \
        gemma3-270m=results/calibtune-gemma3-270m-60,results/calibtune-fn-gemma3-270m-60.json@0.04 \
        smollm2-135m=results/calibtune-smollm2-135m-60@0.04

Each row is one held-out model: `MODEL=COMPARE_DIR[,FUNCTION_REPORT]@LAMBDA`. COMPARE_DIR is an
`apply.py compare --allocations uniform owl alphapruning atp --atp-text calib-next --eval calib-next
wiki/validation wiki/test` folder (every ATP grid point measured on every text); FUNCTION_REPORT an
`apply.py run --function F --tune-spread --atp-text calib-next` report (the function's grid);
LAMBDA the ATP lambda the training models chose (the fixed rule a replay is compared with). A row
without a function report replays ATP's own ramp (`mean(d)` through DSA's map, what the 70 %
searches found), so its grid is ATP's. Perplexities are on the last evaluated text (wiki/test).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def _grid(points: list[dict], key: str) -> dict[float, dict]:
    return {round(float(p[key]), 6): p for p in points if "invalid" not in p}


def row_of(spec: str, sparsity: float) -> dict:
    model, _, rest = spec.partition("=")
    paths, _, training = rest.rpartition("@")
    compare, _, function = paths.partition(",")
    with open(Path(compare) / "table.csv", newline="") as handle:
        table = {r["method"]: r for r in csv.DictReader(handle) if abs(float(r["sparsity"]) - sparsity) < 1e-9}
    choice = next(c for s, c in json.loads((Path(compare) / "atp.json").read_text()).items()
                  if abs(float(s) - sparsity) < 1e-9)
    tune_text, atp = choice["chosen_on"], _grid(choice["grid"], "lambda")
    texts = [k for k in next(iter(atp.values())) if k not in ("lambda", "step")]
    report_text, validation = texts[-1], "wiki/validation"
    if function:
        tuning = json.loads(Path(function).read_text())["tune_spread"]
        own, grid = tuning["file_constant"], _grid(tuning["grid"], "value")
    else:
        own, grid = float(training), atp
    pick = lambda g, text: min(g, key=lambda v: g[v][text])  # noqa: E731
    return {"model": model, "text": report_text, "tune_text": tune_text,
            "fixed": {m: float(table[m][report_text]) for m in ("uniform", "owl", "alphapruning")},
            "atp_training": (float(training), atp[round(float(training), 6)][report_text]),
            "atp_tuned": (pick(atp, tune_text), atp[pick(atp, tune_text)][report_text]),
            "atp_own_validation": (pick(atp, validation), atp[pick(atp, validation)][report_text]),
            "function_file": (own, grid[round(own, 6)][report_text]),
            "function_tuned": (pick(grid, tune_text), grid[pick(grid, tune_text)][report_text])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="+", metavar="MODEL=COMPARE_DIR[,FUNCTION_REPORT]@LAMBDA")
    parser.add_argument("--sparsity", type=float, required=True)
    args = parser.parse_args()
    rows = [row_of(spec, args.sparsity) for spec in args.rows]
    print(f"{rows[0]['text']}, amplitude chosen on {rows[0]['tune_text']}, sparsity {args.sparsity:.0%}:\n")
    print("| held-out model | function, tuned | function, file's constant | uniform | OWL | AlphaPruning "
          "| ATP (training lambda) | ATP, tuned | ATP on its own validation | tuned function vs uniform "
          "| vs best fixed rule | vs tuned ATP |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        fixed = {**row["fixed"], "atp": row["atp_training"][1]}
        strongest = min(fixed, key=fixed.get)
        mine = row["function_tuned"][1]
        cell = lambda pair: f"{pair[1]:.2f} ({pair[0]:g})"  # noqa: E731
        print(f"| {row['model']} | {cell(row['function_tuned'])} | {cell(row['function_file'])} | "
              + " | ".join(f"{row['fixed'][m]:.2f}" for m in ("uniform", "owl", "alphapruning"))
              + f" | {cell(row['atp_training'])} | {cell(row['atp_tuned'])} | {cell(row['atp_own_validation'])} "
              f"| {100 * (mine / fixed['uniform'] - 1):+.1f} % | {100 * (mine / fixed[strongest] - 1):+.1f} % ({strongest}) "
              f"| {100 * (mine / row['atp_tuned'][1] - 1):+.1f} % |")


if __name__ == "__main__":
    main()
