"""Which text, how many windows and which loss should choose the amplitude on a new model?

    python experiments/amplitude/amplitude_proxy.py --model qwen2.5-0.5b --sparsity 0.7 [--function FILE]

ATP's ramp (or a function file's shape) at each constant of its amplitude grid, pruned once with the
final pruner (sequential Wanda); then, from one forward pass per window, the per-window NLL and KL to
the dense model on `calib-next` (the calibration text's next windows: what a replay may read), the
per-window NLL on any --extra-texts (other text a replay may read, such as ptb/train), and on the
report text. The table says what each proxy (each text's perplexity over its first 4, 8, 16 windows;
KL over the first --kl-windows; the mean log-perplexity over all proxy texts) would choose, and what
the choice gives on the report text, beside the report text's own best constant. -> --out JSON
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from dsa.allocation.allocate import BaselineOptions, baseline_ratios  # noqa: E402
from dsa.allocation.baselines import atp_grid  # noqa: E402
from dsa.core.constants import ATP_LAMBDAS  # noqa: E402
from dsa.functions.files import with_map_constant  # noqa: E402
from dsa.functions.replay import amplitude_grid, function_ratios, load_function  # noqa: E402
from dsa.core.storage import atomic_write_text  # noqa: E402
from evaluators.session import EvaluationSession  # noqa: E402
from evaluators.calibrated import ModelConfig  # noqa: E402


def grid_allocations(session, sparsity: float, function: dict | None) -> list[tuple[float, list[float]]]:
    """(constant, ratios) for each valid point of the amplitude grid."""
    if function is None:
        return [(lam, baseline_ratios("atp", session.calibrated, sparsity, BaselineOptions(atp_step=step))[0])
                for lam, step in atp_grid(session.n_blocks, sparsity, ATP_LAMBDAS)]
    points = []
    for value in amplitude_grid(function):
        try:
            ratios, _ = function_ratios(with_map_constant(function, value), session.block_matrices,
                                        session.n_blocks, session.sizes, sparsity)
        except ValueError:
            continue
        points.append((value, ratios))
    return points


@torch.no_grad()
def window_losses(session, windows: torch.Tensor, dense: list[torch.Tensor] | None = None) -> tuple[list, list]:
    """Per-window summed NLL and, for the first len(dense) windows, summed KL(dense || pruned)."""
    nll, kl = [], []
    for index, window in enumerate(windows):
        lp = session._logprobs(window)  # the session's own, as its KL fitness uses
        nll.append(-lp.gather(1, window[1:, None].to(lp.device)).sum().item())
        if dense is not None and index < len(dense):
            kl.append(F.kl_div(lp, dense[index], log_target=True, reduction="sum").item())
    return nll, kl


def ppl(nll: list[float], tokens: int, count: int) -> float:
    return math.exp(sum(nll[:count]) / (tokens * count))


def proxy_choices(rows: list[dict], tokens: int, report_text: str, proxy_texts=("calib-next",)) -> dict[str, dict]:
    """Each proxy's chosen constant and what it gives on the report text: each proxy text's perplexity
    over its first 4, 8 and all windows, calib-next's KL over the windows that have it, the mean over
    proxy texts of their log-perplexities (when there are several), and the report text itself."""
    def choice(score):
        best = min(rows, key=score)
        return {"value": best["value"], report_text: ppl(best["report nll"], tokens, len(best["report nll"]))}

    choices = {}
    for text in proxy_texts:
        measured = len(rows[0][f"{text} nll"])
        choices.update({f"{text} ppl, {n} windows": choice(lambda r, n=n, t=text: sum(r[f"{t} nll"][:n]))
                        for n in sorted({4, 8, measured}) if n <= measured})
        if text == "calib-next":
            choices[f"calib-next KL, {len(rows[0]['calib-next kl'])} windows"] = choice(lambda r: sum(r["calib-next kl"]))
    if len(proxy_texts) > 1:
        # Mean per-token NLL per text, then their mean: each text weighs the same, as models do in the search.
        choices["mean log-ppl of " + " + ".join(proxy_texts)] = choice(
            lambda r: sum(sum(r[f"{t} nll"]) / len(r[f"{t} nll"]) for t in proxy_texts))
    choices[f"{report_text} itself (reference)"] = choice(lambda r: sum(r["report nll"]))
    return choices


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--sparsity", type=float, required=True)
    parser.add_argument("--function", help="a function file: its shape, amplitude from its grid (default: ATP's ramp)")
    parser.add_argument("--calib-windows", type=int, default=8)
    parser.add_argument("--proxy-windows", type=int, default=16, help="windows measured of calib-next and of each --extra-texts")
    parser.add_argument("--extra-texts", nargs="*", default=[], metavar="TEXT",
                        help="other texts a replay may read, measured beside calib-next (e.g. ptb/train)")
    parser.add_argument("--kl-windows", type=int, default=8, help="of those, the first N also get KL to dense")
    parser.add_argument("--report-text", default="wiki/test")
    parser.add_argument("--report-windows", type=int, default=16)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    session = EvaluationSession(ModelConfig(model=args.model, calib_windows=args.calib_windows))
    proxy = session.calibrated.windows("calib-next", args.proxy_windows)
    extras = {text: session.calibrated.windows(text, args.proxy_windows) for text in args.extra_texts}
    report = session.calibrated.windows(args.report_text, args.report_windows)
    tokens = proxy.shape[1] - 1
    dense = [session._logprobs(w) for w in proxy[:args.kl_windows]]
    function = load_function(args.function) if args.function else None
    rows = []
    for value, ratios in grid_allocations(session, args.sparsity, function):
        session.prune(ratios, "wanda")
        proxy_nll, proxy_kl = window_losses(session, proxy, dense)
        extra_nll = {f"{text} nll": window_losses(session, windows)[0] for text, windows in extras.items()}
        report_nll, _ = window_losses(session, report)
        session.restore()
        rows.append({"value": value, "calib-next nll": proxy_nll, "calib-next kl": proxy_kl, **extra_nll,
                     "report nll": report_nll})
        extra_text = "".join(f" {key[:-4]} {ppl(nll, tokens, len(nll)):.2f}" for key, nll in extra_nll.items())
        print(f"{value:g}: calib-next ppl {ppl(proxy_nll, tokens, len(proxy_nll)):.2f} kl/token "
              f"{sum(proxy_kl) / (tokens * len(proxy_kl)):.4f}{extra_text} "
              f"{args.report_text} {ppl(report_nll, tokens, len(report_nll)):.2f}", flush=True)

    choices = proxy_choices(rows, tokens, args.report_text, ("calib-next", *args.extra_texts))
    for name, chosen in choices.items():
        print(f"{name}: {chosen['value']:g} -> {args.report_text} {chosen[args.report_text]:.2f}")
    atomic_write_text(args.out, json.dumps({"model": args.model, "sparsity": args.sparsity, "function": args.function,
                                            "calib_windows": args.calib_windows, "tokens_per_window": tokens,
                                            "report_text": args.report_text,
                                            "extra_texts": args.extra_texts, "rows": rows, "choices": choices}, indent=1))


if __name__ == "__main__":
    main()
