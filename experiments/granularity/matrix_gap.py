"""Does allocating inside the block pay? Block-level and matrix-level allocations of one rule,
pruned on one model with the final pruner and compared window by window.

    python experiments/granularity/matrix_gap.py --model smollm2-135m --sparsity 0.7 --allocations owl uniform

For each allocation named (uniform, owl, atp:LAMBDA) the model is pruned at block granularity (one
ratio per block) and at matrix granularity (dsa.protocol.allocation.matrix_ratios_on: OWL's outlier
ratio per matrix; uniform and ATP give every matrix its block's ratio, so their two forms must
measure the same). Each row: both perplexities on --text and the paired test of matrix vs block
(dsa/protocol/paired.py). In-process, sequential Wanda unless --pruner says otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from dsa.allocation.allocate import BaselineOptions  # noqa: E402
from dsa.allocation.baselines import atp_grid  # noqa: E402
from dsa.core.errors import UserError  # noqa: E402
from dsa.protocol.allocation import MATRIX_METHODS, matrix_ratios_on, ratios_on  # noqa: E402
from dsa.protocol.paired import paired_gap  # noqa: E402
from evaluators.calibrated import ModelConfig  # noqa: E402
from evaluators.session import EvaluationSession  # noqa: E402


def options_of(spec: str, session: EvaluationSession, sparsity: float) -> tuple[str, BaselineOptions]:
    """`owl`, `uniform` or `atp:LAMBDA` -> (method, its options)."""
    method, _, lam = spec.partition(":")
    if method not in MATRIX_METHODS or (method == "atp") != bool(lam):
        raise UserError(f"{spec!r}: use uniform, owl or atp:LAMBDA")
    if not lam:
        return method, BaselineOptions()
    steps = [step for value, step in atp_grid(session.n_blocks, sparsity, (float(lam),)) if value == float(lam)]
    if not steps:
        raise UserError(f"{spec}: ATP's spread {lam} is not legal at {sparsity:.0%} on this model")
    return method, dataclasses.replace(BaselineOptions(), atp_step=steps[0])


def measure(session: EvaluationSession, spec: str, sparsity: float, pruner: str, text: str, windows: int) -> dict:
    method, options = options_of(spec, session, sparsity)
    forms = {"block": ratios_on(session, sparsity, method=method, options=options)[0],
             "matrix": matrix_ratios_on(session, sparsity, method, options)[0]}
    logppl = {}
    for form, ratios in forms.items():
        session.prune(ratios, pruner)
        logppl[form] = session.window_log_perplexities([text], windows, f"{spec} {form}")[text]
    session.restore()
    return {"allocation": spec, **{f"{form}_ppl": math.exp(statistics.fmean(v)) for form, v in logppl.items()},
            **paired_gap(logppl["matrix"], logppl["block"])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--allocations", nargs="+", default=["owl", "uniform"])
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--pruner", default="wanda", choices=("wanda", "sparsegpt"))
    parser.add_argument("--calib-windows", type=int, default=8)
    parser.add_argument("--text", default="wiki/test")
    parser.add_argument("--windows", type=int, default=16)
    args = parser.parse_args(argv)
    try:
        session = EvaluationSession(ModelConfig(model=args.model, calib_windows=args.calib_windows))
        rows = [measure(session, spec, args.sparsity, args.pruner, args.text, args.windows) for spec in args.allocations]
    except UserError as err:
        sys.exit(f"error: {err}")
    print(f"{args.model} at {args.sparsity:.0%}, {args.pruner}, {args.windows} windows of {args.text}\n")
    print("| allocation | block | matrix | matrix vs block | z (paired) | windows where matrix is lower |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['allocation']} | {r['block_ppl']:.2f} | {r['matrix_ppl']:.2f} | {100 * r['ratio']:+.1f} % | "
              f"{r['z']:+.2f} | {r['windows_lower']} of {r['windows']} |")


if __name__ == "__main__":
    main()
