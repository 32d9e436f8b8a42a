"""The results of a search: the best function as data and formula, its ratios, and the evidence
(validation and test perplexity next to the baselines, convergence and allocation plots)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dsa.functions.files import describe
from dsa.outputs.comparison import plot_allocations
from evaluators.cache import atomic_write_text


def _plots(out: Path, history: list[dict], baseline_val: dict[str, float], allocations: dict, label: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    gens = [h["generation"] for h in history]
    ax.plot(gens, [h["best"] for h in history], label=f"{label} best")
    ax.plot(gens, [h["median"] for h in history], label=f"{label} median", alpha=0.6)
    for name, value in baseline_val.items():
        ax.axhline(value, linestyle="--", linewidth=1, label=name, color=f"C{2 + list(baseline_val).index(name)}")
    ax.set_xlabel("generation")
    ax.set_ylabel("validation fitness")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "convergence.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    plot_allocations(ax, allocations, highlight="best")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "allocation.png", dpi=120)
    plt.close(fig)


def write_report(out: Path, function: dict, allocations: dict[str, list[float]], val: dict[str, float],
                 test: dict[str, dict[str, float]], history: list[dict], counters: dict, config: dict,
                 label: str) -> dict:
    """`allocations`, `val` and `test` are keyed by 'best' and each baseline name."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "best.json", json.dumps(function, indent=2))
    atomic_write_text(out / "formula.txt", describe(function) + "\n")
    with open(out / "ratios.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["block", *allocations])
        for i, row in enumerate(zip(*allocations.values())):
            writer.writerow([i, *(f"{r:.6f}" for r in row)])
    baselines = {n: {"val_ppl": val[n], "test_ppl": test[n], "ratios": allocations[n]} for n in allocations if n != "best"}
    report = {"best": {"function": function, "ratios": allocations["best"], "val_ppl": val["best"],
                       "test_ppl": test["best"]},
              "baselines": baselines, **counters, "config": config}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    texts = list(test["best"])
    lines = [f"# Search result ({label})", "", "```", describe(function), "```", "",
             f"| allocation | validation | {' | '.join(texts)} |", "|---|---|" + "---|" * len(texts)]
    for name in allocations:
        lines.append(f"| {name} | {val[name]:.3f} | " + " | ".join(f"{test[name][t]:.3f}" for t in texts) + " |")
    best_base = min((n for n in allocations if n != "best"), key=lambda n: test[n][texts[0]])
    gain = 100 * (1 - test["best"][texts[0]] / test[best_base][texts[0]])
    lines += ["", f"On {texts[0]} the best function is {gain:.1f}% lower in perplexity than the best baseline "
                  f"({best_base})." if gain > 0 else
              f"On {texts[0]} the best function is {-gain:.1f}% higher in perplexity than the best baseline ({best_base}).",
              "", f"evaluations {counters['evaluations']}, cache hits {counters['cache_hits']}, feature cache hits "
              f"{counters['feature_cache_hits']}, wall {counters['wall_s']:.0f} s", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    _plots(out, history, {n: val[n] for n in allocations if n != "best" and math.isfinite(val[n])}, allocations, label)
    return report
