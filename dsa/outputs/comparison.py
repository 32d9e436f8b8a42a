"""Write a comparison of allocations: markdown table, CSV, and a plot of per-block ratios."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


def plot_allocations(ax, allocations: dict[str, list[float]], highlight: str | None = None) -> None:
    """One line of per-block ratios per allocation."""
    for name, ratios in allocations.items():
        ax.plot(range(len(ratios)), ratios, marker=".", label=name, linewidth=2 if name == highlight else 1)
    ax.set_xlabel("block")
    ax.set_ylabel("sparsity ratio")


def plot_role_heatmap(fig, ax, entries: list[dict[str, float]], title: str) -> None:
    """A per-matrix allocation as a depth x role heatmap: columns blocks, rows roles (q .. down)."""
    from dsa.allocation.matrices import ROLES, role_of

    grid = [[float("nan")] * len(entries) for _ in ROLES]
    for block, entry in enumerate(entries):
        for name, ratio in entry.items():
            grid[ROLES.index(role_of(name))][block] = ratio
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(ROLES)), ROLES)
    ax.set_xlabel("block")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="sparsity ratio")


def markdown_table(model: str, pruner: str, dense: dict[str, float], rows: list[dict]) -> str:
    texts = list(dense)
    header = f"{model}, {pruner}; dense: " + ", ".join(f"{t} {v:.2f}" for t, v in dense.items())
    lines = [header, "", "| sparsity | method | achieved | " + " | ".join(texts) + " |",
             "|---|---|---|" + "---|" * len(texts)]
    for row in rows:
        best = {t: min(r[t] for r in rows if r["sparsity"] == row["sparsity"]) for t in texts}
        cells = [f"**{row[t]:.2f}**" if row[t] == best[t] else f"{row[t]:.2f}" for t in texts]
        lines.append(f"| {row['sparsity']:.0%} | {row['method']} | {row['achieved']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def atp_lines(atp_choices: dict[str, dict]) -> str:
    """How ATP's difference was chosen at each sparsity: every grid point's validation perplexity."""
    lines = []
    for sparsity, choice in atp_choices.items():
        if "grid" not in choice:  # the user's --atp-step
            lines.append(f"ATP at {float(sparsity):.0%}: step {choice['step']:.5f} (--atp-step)")
            continue
        text = choice["chosen_on"]
        grid = ", ".join(f"{row['lambda']:g}: {row[text]:.2f}" for row in choice["grid"])
        lines.append(f"ATP at {float(sparsity):.0%}: step {choice['step']:.5f} chosen on {text} "
                     f"(lambda: perplexity {grid})")
    return "\n".join(lines)


def write_comparison(out: Path, model: str, pruner: str, dense: dict[str, float], rows: list[dict],
                     allocations: dict[tuple[str, float], list[float]], atp_choices: dict | None = None) -> str:
    """`atp_choices`: per sparsity, ATP's chosen step and its grid (also written to atp.json)."""
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(model, pruner, dense, rows)
    if atp_choices:
        table += "\n" + atp_lines(atp_choices) + "\n"
        (out / "atp.json").write_text(json.dumps(atp_choices, indent=2))
    (out / "table.md").write_text(table)
    with open(out / "table.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    sparsities = sorted({s for _, s in allocations})
    fig, axes = plt.subplots(1, len(sparsities), figsize=(5 * len(sparsities), 3.6), squeeze=False)
    for ax, sparsity in zip(axes[0], sparsities):
        plot_allocations(ax, {method: r for (method, s), r in allocations.items() if s == sparsity})
        ax.set_title(f"{model} at {sparsity:.0%}")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ratios.png", dpi=120)
    plt.close(fig)
    return table
