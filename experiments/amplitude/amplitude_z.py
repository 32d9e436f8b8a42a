"""What the paired test of `--holdout-tune-z` / `--tune-z` would choose on measured amplitude grids.

    python experiments/amplitude/amplitude_z.py --z 2 results/proxy/qwen2.5-0.5b-70-atp-ptb.json@0.12 ...
    python experiments/amplitude/amplitude_z.py --z 2 results/loo-qwen-70-g12/report.json

An argument with `@` is a `experiments/amplitude/amplitude_proxy.py --extra-texts ptb/train` JSON (every grid
constant pruned once, per-window NLL on calib-next, ptb/train and the report text) and, after `@`,
the constant the training models chose (the reference a replay starts from). For each grid the
table gives the choosing texts' lowest (their mean log-perplexity), its z against the reference
over the windows, what `--z` keeps, and what each gives on the report text beside the report
text's own best.

An argument without `@` is a `search.py --holdout-tune` report.json: each held-out model's two
tuning grids (the function's, reference its file's constant; ATP's, reference the training
lambda). A search report measures the report text only at the reference and at the constant its
own rule chose, so a report-text cell the run did not measure reads "not measured".

The choice is made by the product's own code (dsa/protocol/amplitude.py).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from dsa.protocol.amplitude import choose_amplitude  # noqa: E402


def grid_row(path: str, reference: float, z: float, texts: list[str]) -> str:
    data = json.loads(Path(path).read_text())
    rows, tokens = data["rows"], data["tokens_per_window"]
    values = [row["value"] for row in rows]
    losses = [{text: [nll / tokens for nll in row[f"{text} nll"]] for text in texts} for row in rows]
    report = {row["value"]: math.exp(sum(row["report nll"]) / (tokens * len(row["report nll"]))) for row in rows}
    lowest, _ = choose_amplitude(values, losses, texts)
    chosen, how = choose_amplitude(values, losses, texts, reference, z)
    oracle = min(report, key=report.get)
    name = f"{data['model']} {100 * data['sparsity']:g} %" + (" (function)" if data.get("function") else "")
    marks = "oracle" if values[chosen] == oracle else f"{100 * (report[values[chosen]] / report[oracle] - 1):+.1f} % vs oracle"
    return (f"| {name} | {reference:g}: {report[reference]:.2f} | {values[lowest]:g}: {report[values[lowest]]:.2f} | "
            f"{how['z']:.2f} | **{values[chosen]:g}: {report[values[chosen]]:.2f}** ({marks}) | {oracle:g}: {report[oracle]:.2f} |")


def report_rows(path: str, z: float) -> list[str]:
    """The paired test on a search report's held-out tuning grids (their stored per-window values)."""
    report = json.loads(Path(path).read_text())
    text = report["config"]["report_texts"][0]
    references = {"best-tuned": ("best", report["best"]["function"]["map"]["lambda"])}
    rows = []
    for table in report["targets"].values():
        references["atp-tuned"] = ("atp", table["atp"]["lambda"])
        for name, tuning in table.get("tuning", {}).items():
            entries = table["allocations"]
            plain, reference = references[name]
            # the report text was measured at the reference and at the constant the run chose
            known = {reference: entries[plain]["final"][text], tuning["chosen"]: entries[name]["final"][text]}
            grid = tuning["grid"]
            if any("window_log_ppl" not in row for row in grid):
                raise SystemExit(f"{path}: its tuning grids have no per-window values (a report from before --holdout-tune-z)")
            values = [row["value"] for row in grid]
            texts = tuning["chosen_on"].split(" + ")
            losses = [row["window_log_ppl"] for row in grid]
            chosen, how = choose_amplitude(values, losses, texts, reference, z)
            lowest, _ = choose_amplitude(values, losses, texts)

            def cell(value):
                return f"{value:g}: {known[value]:.2f}" if value in known else f"{value:g}: not measured"
            what = "function" if name == "best-tuned" else "ATP"
            rows.append(f"| {table['model']} {100 * table['sparsity']:g} % ({what}) | {cell(reference)} | "
                        f"{cell(values[lowest])} | {how['z']:.2f} | **{cell(values[chosen])}** | - |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grids", nargs="+", metavar="PROXY_JSON@REFERENCE | REPORT_JSON")
    parser.add_argument("--z", type=float, default=2.0, help="standard errors the lowest must beat the reference by")
    parser.add_argument("--texts", nargs="+", default=["calib-next", "ptb/train"], help="the choosing texts")
    args = parser.parse_args()
    print(f"| grid | training constant | lowest on {' + '.join(args.texts)} | z | chosen (the lowest if z < -{args.z:g}) "
          "| report text's own best |")
    print("|---|---|---|---|---|---|")
    for spec in args.grids:
        if "@" not in spec:
            print("\n".join(report_rows(spec, args.z)))
            continue
        path, _, reference = spec.rpartition("@")
        print(grid_row(path, float(reference), args.z, args.texts))


if __name__ == "__main__":
    main()
