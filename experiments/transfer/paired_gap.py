"""Is a function's gap to a baseline real? Both pruned on one model, compared window by window.

    python experiments/transfer/paired_gap.py --model smollm2-135m --sparsity 0.7 --calib-windows 8 \
        --function results/loo-smollm-70-guard/best.json --against atp:0.12 uniform \
        --text wiki/test --windows 64

Prunes the model with the function's ratios and with each allocation after --against (a baseline
name, or `atp:LAMBDA` for ATP's ramp at a spread lambda, as a search report gives it), all with
the final pruner, and measures every window's log-perplexity on one text. For each baseline the
table gives its perplexity, the function's ratio to it, and the paired test over the windows (the
product's own, dsa/protocol/amplitude.py): the mean difference of log-perplexity and that
difference over its standard error. |z| under about 2 is a tie, whatever the ratio says.
In-process, with this process's threads: the numbers are close to a search report's actors' but,
at 70 %, not always equal to the digit (sequential Wanda carries each block's float rounding into the
next block's calibration, and the rounding differs with the thread count and the CPU's vector path).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from dsa.allocation.allocate import METHODS, BaselineOptions, baseline_ratios  # noqa: E402
from dsa.allocation.baselines import atp_grid  # noqa: E402
from dsa.core.constants import alpha_eps_for  # noqa: E402
from dsa.protocol.paired import paired_gap  # noqa: E402
from dsa.functions.replay import function_ratios, load_function  # noqa: E402
from dsa.core.errors import UserError  # noqa: E402
from evaluators.session import EvaluationSession  # noqa: E402
from evaluators.calibrated import ModelConfig  # noqa: E402


def baseline_spec(spec: str) -> str:
    """argparse type of --against: a baseline name or atp:LAMBDA, checked before the model loads."""
    name, _, lam = spec.partition(":")
    try:
        ok = name in METHODS and (name == "atp") == bool(lam) and (not lam or 0 <= float(lam) < 1)  # ATP needs its spread
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"{spec!r}: use one of {', '.join(m for m in METHODS if m != 'atp')}, or atp:LAMBDA (ATP at spread LAMBDA)")
    return spec


def allocation(spec: str, session: EvaluationSession, sparsity: float, pruner: str = "wanda") -> list[float]:
    """Ratios of a baseline name or of `atp:LAMBDA` (step 2 * lambda / (L - 1), as the search's ATP)."""
    options = BaselineOptions(alpha_eps=alpha_eps_for(pruner))
    if spec.startswith("atp:"):
        lam = float(spec[4:])
        steps = [step for value, step in atp_grid(session.n_blocks, sparsity, (lam,)) if value == lam]
        if not steps:
            raise UserError(f"{spec}: ATP's spread {lam:g} is not legal at {sparsity:.0%} on this model")
        options = dataclasses.replace(options, atp_step=steps[0])
        spec = "atp"
    return baseline_ratios(spec, session.calibrated, sparsity, options)[0]


def measure(session: EvaluationSession, document: dict, against: list[str], sparsity: float, pruner: str,
            text: str, windows: int) -> dict[str, list[float]]:
    """Every window's log-perplexity on `text` after pruning with the function's ratios ("function")
    and with each allocation in `against`; the model is dense again afterwards."""
    ratios = {"function": function_ratios(document, session.block_matrices, session.n_blocks, session.sizes, sparsity)[0]}
    ratios |= {spec: allocation(spec, session, sparsity, pruner) for spec in against}
    logppl = {}
    for name, values in ratios.items():
        session.prune(values, pruner)
        logppl[name] = session.window_log_perplexities([text], windows, name)[text]
    session.restore()
    return logppl


def gap_rows(function: list[float], others: dict[str, list[float]], text: str) -> list[dict]:
    """The function's window log-perplexities against each baseline's, paired over the windows
    (dsa/protocol/paired.py: mean log-ratio, its standard error, z, windows where it is lower)."""
    return [{"against": name, "perplexity": math.exp(statistics.fmean(logppl)), **paired_gap(function, logppl)}
            for name, logppl in others.items()]


def table(function_ppl: float, rows: list[dict], text: str) -> str:
    lines = [f"function on {text}: {function_ppl:.2f}", "",
             "| against | its perplexity | function vs it | mean log-ppl difference ± standard error | z (paired) | windows where the function is lower |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['against']} | {r['perplexity']:.2f} | {100 * r['ratio']:+.1f} % | {r['difference']:+.4f} ± {r['standard_error']:.4f} | "
              f"{r['z']:+.2f} | {r['windows_lower']} of {r['windows']} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--function", required=True, help="function file (search.py's best.json)")
    parser.add_argument("--against", nargs="+", default=["uniform"], type=baseline_spec, help="baselines: uniform, owl, alphapruning, atp:LAMBDA ...")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--pruner", default="wanda", choices=("wanda", "sparsegpt", "alps"))
    parser.add_argument("--calib", default="c4/train")
    parser.add_argument("--calib-windows", type=int, default=8)
    parser.add_argument("--text", default="wiki/test")
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--json", help="also write the rows and every window's log-perplexity here")
    args = parser.parse_args(argv)
    if args.windows < 2:
        parser.error("a paired test needs at least 2 windows")
    try:
        document = load_function(args.function)  # a bad file fails before the model loads
        session = EvaluationSession(ModelConfig(model=args.model, calib_text=args.calib, calib_windows=args.calib_windows))
        logppl = measure(session, document, args.against, args.sparsity, args.pruner, args.text, args.windows)
    except UserError as err:
        sys.exit(f"error: {err}")
    function = logppl.pop("function")
    rows = gap_rows(function, logppl, args.text)
    print(table(math.exp(statistics.fmean(function)), rows, args.text))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "window_logppl": {"function": function, **logppl}}, indent=1))


if __name__ == "__main__":
    main()
