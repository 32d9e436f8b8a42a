"""One leave-one-out transfer table from several multi-model searches' reports.

    python experiments/transfer/transfer_table.py results/loo-qwen results/loo-gemma results/loo-smollm \
        --own-atp gemma3-270m=results/atp-own-gemma3-270m-70

Each search (`search.py --models A B --holdout C`) wrote report.json; this prints, for every
held-out target, the final pruner's perplexity of the replayed function beside the baselines
the report computed (ATP with the training models' difference), how far the function is
from uniform and from the strongest fixed rule, and, where given, ATP tuned on the held-out
model's own validation text (`apply.py compare --allocations atp`), a reference that a
replayed function does not get.

A search run with `--holdout-tune TEXT` also replayed the function with its map constant, and ATP
with its lambda, chosen on the held-out model's TEXT (calib-next: calibration text only); a second
table shows those beside the fixed rules.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

FIXED_RULES = ("uniform", "owl", "alphapruning", "atp")
VALIDATION = "wiki/validation"


def own_atp(spec: str, text: str, sparsity: float) -> tuple[str, float, float]:
    """`model=compare_dir` -> (model, ATP's perplexity on `text`, its lambda)."""
    model, folder = spec.split("=", 1)
    with open(Path(folder) / "table.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["method"] == "atp" and abs(float(r["sparsity"]) - sparsity) < 1e-9]
    if not rows:
        raise SystemExit(f"{folder}/table.csv has no ATP row at {sparsity:.0%}")
    choices = json.loads((Path(folder) / "atp.json").read_text())
    choice = next(c for s, c in choices.items() if abs(float(s) - sparsity) < 1e-9)
    if choice["chosen_on"] != VALIDATION and all(VALIDATION in p and text in p for p in choice["grid"]):
        # A compare that chose on another text (calib-next) but measured every grid point on both.
        point = min(choice["grid"], key=lambda p: p[VALIDATION])
        return model, float(point[text]), point["lambda"]
    chosen = next(point["lambda"] for point in choice["grid"] if point["step"] == choice["step"])
    return model, float(rows[0][text]), chosen


def held_out_rows(report_dir: Path) -> list[dict]:
    report = json.loads((report_dir / "report.json").read_text())
    text = report["config"]["report_texts"][0]
    rows = []
    for target, table in report["targets"].items():
        if table["trained"]:
            continue
        final = {name: entry["final"][text] for name, entry in table["allocations"].items()}
        model, sparsity = target.rsplit("@", 1)
        rows.append({"search": report_dir.name, "model": model, "sparsity": float(sparsity), "text": text,
                     "final": final, "atp_lambda": (table.get("atp") or {}).get("lambda"),
                     "tuning": table.get("tuning") or {},
                     "trained_on": [t for t, v in report["targets"].items() if v["trained"]]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="search result folders (each with report.json)")
    parser.add_argument("--own-atp", nargs="*", default=[], metavar="MODEL=DIR",
                        help="apply.py compare folders with ATP tuned on the held-out model's validation")
    args = parser.parse_args()
    rows = [row for folder in args.reports for row in held_out_rows(folder)]
    print("| held-out model | trained on | function | uniform | OWL | AlphaPruning | ATP (training lambda) "
          "| vs uniform | vs best fixed rule | ATP on its own validation |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        final = row["final"]
        fixed = {name: final[name] for name in FIXED_RULES if name in final}
        strongest = min(fixed, key=fixed.get)
        own = [own_atp(s, row["text"], row["sparsity"]) for s in args.own_atp if s.split("=")[0] == row["model"]]
        own_cell = f"{own[0][1]:.2f} (lambda {own[0][2]:g})" if own else "-"
        trained = ", ".join(t.rsplit("@", 1)[0] for t in row["trained_on"])
        print(f"| {row['model']} ({row['sparsity']:.0%}) | {trained} | {final['best']:.2f} | "
              + " | ".join(f"{fixed[n]:.2f}" if n in fixed else "-" for n in FIXED_RULES[:3])
              + f" | {fixed.get('atp', float('nan')):.2f} (lambda {row['atp_lambda']}) "
              f"| {100 * (final['best'] / final['uniform'] - 1):+.1f} % "
              f"| {100 * (final['best'] / fixed[strongest] - 1):+.1f} % ({strongest}) | {own_cell} |")
    tuned_table([row for row in rows if row["tuning"]])


def tuned_table(rows: list[dict]) -> None:
    """The replays whose amplitude was chosen on the held-out model (`--holdout-tune`)."""
    if not rows:
        return
    text = rows[0]["tuning"]["best-tuned"]["chosen_on"]
    print(f"\nAmplitude chosen on each held-out model's {text} (final pruner; {rows[0]['text']} below):\n")
    print("| held-out model | trained on | function, tuned | ATP, tuned | function, file's constant "
          "| ATP (training lambda) | uniform | OWL | AlphaPruning | tuned function vs uniform "
          "| vs best fixed rule | vs tuned ATP |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        final, tuning = row["final"], row["tuning"]
        fixed = {name: final[name] for name in FIXED_RULES if name in final}
        strongest = min(fixed, key=fixed.get)
        mine = final["best-tuned"]
        trained = ", ".join(t.rsplit("@", 1)[0] for t in row["trained_on"])
        cells = " | ".join(f"{fixed[n]:.2f}" if n in fixed else "-" for n in FIXED_RULES[:3])
        print(f"| {row['model']} ({row['sparsity']:.0%}) | {trained} "
              f"| {mine:.2f} ({tuning['best-tuned']['chosen']:g}) | {final['atp-tuned']:.2f} ({tuning['atp-tuned']['chosen']:g}) "
              f"| {final['best']:.2f} | {fixed.get('atp', float('nan')):.2f} (lambda {row['atp_lambda']}) | {cells} "
              f"| {100 * (mine / final['uniform'] - 1):+.1f} % | {100 * (mine / fixed[strongest] - 1):+.1f} % ({strongest}) "
              f"| {100 * (mine / final['atp-tuned'] - 1):+.1f} % |")


if __name__ == "__main__":
    main()
