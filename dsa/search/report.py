"""The results of a search: the best function as data and formula, its ratios, and the evidence
(validation and test perplexity next to the baselines, convergence and allocation plots)."""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dsa.allocation.matrices import role_of
from dsa.functions.files import describe
from dsa.outputs.comparison import plot_allocations, plot_role_heatmap
from dsa.core.storage import atomic_write_text


def block_view(ratios: list) -> list[float]:
    """Per-block ratios; a per-matrix allocation's block entry as the plain mean of its matrices'
    ratios (for the per-block table and plot; matrix_ratios.csv holds each matrix's)."""
    return [sum(r.values()) / len(r) if isinstance(r, Mapping) else r for r in ratios]


def _matrix_outputs(out: Path, tables: dict[str, dict]) -> None:
    """matrix_ratios.csv (every per-matrix allocation, one row per matrix) and heatmap.png (the best's
    ratios per block and role on the first target)."""
    rows = [(target, name, block, linear, role_of(linear), f"{ratio:.6f}")
            for target, table in tables.items() for name, entry in table["allocations"].items()
            for block, ratios in enumerate(entry["ratios"]) if isinstance(ratios, Mapping)
            for linear, ratio in ratios.items()]
    if not rows:
        return
    with open(out / "matrix_ratios.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("target", "allocation", "block", "matrix", "role", "ratio"), *rows])
    target, table = next(iter(tables.items()))
    best = table["allocations"]["best"]["ratios"]
    if all(isinstance(r, Mapping) for r in best):
        fig, ax = plt.subplots(figsize=(7, 3.2))
        plot_role_heatmap(fig, ax, best, f"best on {target}: sparsity per block and role")
        fig.tight_layout()
        fig.savefig(out / "heatmap.png", dpi=120)
        plt.close(fig)


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


def write_report(out: Path, function: dict | None, tables: dict[str, dict], history: list[dict], counters: dict,
                 config: dict, label: str) -> dict:
    """`tables`: per target ('model@sparsity'), the best and each baseline's ratios, block metric,
    validation fitness (search's form; None on held-out models) and final-pruner perplexities.

    `function` is None for a per-block search: its result is the ratio vector itself.
    """
    out.mkdir(parents=True, exist_ok=True)
    formula = describe(function) if function is not None else "per-block ratios (no function): see ratios.csv"
    if function is not None:
        atomic_write_text(out / "best.json", json.dumps(function, indent=2))
    atomic_write_text(out / "formula.txt", formula + "\n")
    first_name, first = next(iter(tables.items()))
    allocations = {name: block_view(entry["ratios"]) for name, entry in first["allocations"].items()}
    with open(out / "ratios.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["target", "block", *allocations])
        for target, table in tables.items():
            columns = [block_view(entry["ratios"]) for entry in table["allocations"].values()]
            for i, row in enumerate(zip(*columns)):
                writer.writerow([target, i, *(f"{r:.6f}" for r in row)])
    _matrix_outputs(out, tables)

    def summary(entry):  # back-compatible view: validation fitness and final-pruner test perplexities
        return {"ratios": entry["ratios"], "block_metric": entry["block_metric"], "val_ppl": entry["val_fitness"],
                "test_ppl": {t: v for t, v in entry["final"].items() if t in config["report_texts"]},
                "final_val_ppl": entry["final"].get(config["fitness_text"])}

    report = {"best": {"function": function, **summary(first["allocations"]["best"])},
              "baselines": {n: summary(e) for n, e in first["allocations"].items() if n != "best"},
              "targets": tables, "transfer": transfer_rows(tables, config), **counters, "config": config,
              "kind": kind_of(config), "replay": replay_command(out, config)}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", "\n".join(_markdown(formula, tables, counters, config, label, out)))
    val = {n: e["val_fitness"] for n, e in first["allocations"].items() if n != "best"}
    _plots(out, history, {n: v for n, v in val.items() if v is not None and math.isfinite(v)}, allocations, label)
    return report


def transfer_rows(tables: dict[str, dict], config: dict) -> list[dict]:
    """Rows = targets (trained or held-out), columns = allocations: the final pruner's perplexity
    on the first report text."""
    text = config["report_texts"][0]
    return [{"target": name, "trained": table["trained"],
             **{alloc: entry["final"][text] for alloc, entry in table["allocations"].items()}}
            for name, table in tables.items()]


def kind_of(config: dict) -> str:
    """What a reader may do with the result: a function checked on models it never saw, or one
    fitted to its training models only (which need not carry over), or one model's ratios."""
    trained = ", ".join(config["models"] or [config["model_config"]["model"]])
    if config["search"]["mode"] == "per-block":
        return f"per-block ratios of {trained} (not a function: they fit that model only)"
    per_matrix = "a per-matrix function" if config["search"].get("granularity") == "matrix" else "a function"
    if config["holdout"]:
        return f"{per_matrix} trained on {trained}, checked on held-out {', '.join(config['holdout'])}"
    if config["search"].get("guard_check") and len(config["models"]) > 1:
        return (f"{per_matrix} found with the transfer protocol (guard check, several models) on {trained}; this run "
                "held out no model (python search.py report RUN --holdout MODEL replays it on one)")
    return (f"{per_matrix} fitted to {trained} only, not checked on any other model (for other models: "
            "python search.py --preset transfer, or a checked function of python apply.py list)")


def replay_command(out: Path, config: dict) -> str | None:
    if config["search"]["mode"] == "per-block":
        return None
    return f"python apply.py run --function {out / 'best.json'} --model MODEL --sparsity {config['search']['sparsity']}"


def _markdown(formula: str, tables: dict, counters: dict, config: dict, label: str, out: Path) -> list[str]:
    pruner = config["final_pruner"]
    replay = replay_command(out, config)
    lines = [f"# Search result ({label})", "", "```", formula, "```", "", f"Kind: {kind_of(config)}.", ""]
    lines += [f"Replay: `{replay}`", ""] if replay else []
    for name, table in tables.items():
        lines += _table_lines(name, table, config)
        lines += _choice_lines(table, config["report_texts"][0], pruner)
        lines.append("")
    selection = counters.get("final_select", {})
    if selection.get("count", 0) >= 2:
        rows = [f"| {i + 1} | {c['search_score']:.4f} | {c['final_score']:.4f} |{' **reported**' if i == selection['chosen'] else ''}"
                for i, c in enumerate(selection["candidates"])]
        lines += [f"Reported function chosen with {pruner} on {selection['text']} among the final population's "
                  f"{selection['count']} best distinct allocations (training models only):", "",
                  "| search rank | search's score | final pruner's score |", "|---|---|---|", *rows, ""]
    lines += [f"evaluations {counters['evaluations']}, cache hits {counters['cache_hits']}, feature cache hits "
              f"{counters['feature_cache_hits']}, wall {counters['wall_s']:.0f} s", ""]
    return lines


def _table_lines(name: str, table: dict, config: dict) -> list[str]:
    """One target's table: every allocation's validation fitness and final-pruner perplexities."""
    pruner = config["final_pruner"]
    texts = [config["fitness_text"], *config["report_texts"]]
    kind = "trained" if table["trained"] else "held-out"
    lines = [f"## {name} ({kind})", "",
             f"validation fitness = the search's form ({config['search'].get('fitness_form', 'cached')} Wanda, "
             f"{config['search']['fitness_windows']} "
             f"windows); other columns = {pruner} (sequential), {config['report_windows']} windows.", "",
             "| allocation | validation fitness | " + " | ".join(f"{t} ({pruner})" for t in texts) + " |",
             "|---|---|" + "---|" * len(texts)]
    for alloc, entry in table["allocations"].items():
        fitness = "-" if entry["val_fitness"] is None else f"{entry['val_fitness']:.3f}"
        lines.append(f"| {alloc} | {fitness} | " + " | ".join(f"{entry['final'][t]:.3f}" for t in texts) + " |")
    if "dense" in table:  # reports written before the dense row have none
        lines.append("| dense (unpruned) | - | " + " | ".join(f"{table['dense'][t]:.3f}" for t in texts) + " |")
    return lines + [""]


def _choice_lines(table: dict, best_text: str, pruner: str) -> list[str]:
    """How the best fares against the strongest baseline, and how ATP's and the tuned constants were chosen."""
    lines = []
    final = {a: e["final"][best_text] for a, e in table["allocations"].items()}
    baselines = {a: v for a, v in final.items() if not a.startswith("best")}  # best-tuned is the function too
    strongest = min(baselines, key=baselines.get)
    for alloc, what in (("best", "the best allocation"), ("best-tuned", "the function with this model's amplitude")):
        if alloc in final:
            gain = 100 * (1 - final[alloc] / baselines[strongest])
            relation = (f"{abs(gain):.1f}% {'lower' if gain > 0 else 'higher'} in perplexity than"
                        if abs(gain) >= 0.05 else "as good as")
            lines.append(f"On {best_text} with {pruner}, {what} is {relation} the strongest baseline ({strongest}).")
    if table.get("atp"):
        lines.append(atp_line(table["atp"]))
    for alloc, tuned in (table.get("tuning") or {}).items():
        text = tuned["chosen_on"]
        grid = ", ".join(f"{row['value']:g}: {row[text]:.2f}" for row in tuned["grid"])
        windows = f"{tuned['windows']} windows of " if "windows" in tuned else ""
        lines.append(f"{alloc}: map constant {tuned['chosen']:g} chosen on {windows}this model's {text} with {pruner} "
                     f"({grid}).")
        if "reference" in tuned:  # the paired test against the training models' constant
            verdict = "switched to it" if tuned["switched"] else f"kept the training constant {tuned['reference']:g}"
            lines.append(f"  The lowest, {tuned['lowest']:g}, against the training constant {tuned['reference']:g}: "
                         f"z = {tuned['z']:.2f} over the windows; {verdict} ({tuned['rule']}).")
    forms = table.get("forms", {})
    if forms.get("count", 0) >= 2:
        lines.append(f"Search's form vs {pruner}: Spearman {forms['spearman']:.2f} over the final population's "
                     f"{forms['count']} best distinct allocations.")
    return lines


def atp_line(atp: dict) -> str:
    """ATP's choice in words: on which text and windows, with which pruner, and its grid."""
    how, grid = atp["chosen_on"], atp.get("grid") or []
    if "windows" in atp:
        how = f"{atp['windows']} windows of {how}" + (f" with {atp['pruner']}" if "pruner" in atp else "")
    if grid and "score" in grid[0]:  # a held-out model: the training models' multi-model score per lambda
        points = "; lambda: multi-model score " + ", ".join(f"{p['lambda']:g}: {p['score']:+.4f}" for p in grid)
    elif grid:
        points = "; lambda: perplexity " + ", ".join(f"{p['lambda']:g}: {p[atp['chosen_on']]:.2f}" for p in grid)
    else:
        points = ""
    return f"ATP's step {atp['step']:.5f} (lambda {atp['lambda']}) chosen on {how}{points}."
