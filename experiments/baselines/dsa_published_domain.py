"""Where DSA's published function is defined: per block, the variance of ln|Wanda score| that
ATAN then ASIN read. asin(atan(v)) is NaN once v > tan(1) = 1.557; DSA's sanitiser turns NaN into
0, so a model whose every block is past it gets flat importance, hence uniform ratios.

    python experiments/baselines/dsa_published_domain.py --models gemma3-270m smollm2-135m qwen2.5-0.5b
"""
import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from dsa.allocation.baselines import _dsa_abslog, dsa_published_metric  # noqa: E402
from evaluators.calibrated import CalibratedModel, ModelConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["gemma3-270m", "smollm2-135m", "qwen2.5-0.5b"])
    parser.add_argument("--calib-windows", type=int, default=8)
    args = parser.parse_args()
    for model in args.models:
        calibrated = CalibratedModel(ModelConfig(model=model, calib_windows=args.calib_windows))
        scores = [calibrated.block_scores(block.index, "wanda") for block in calibrated.blocks]
        variances = torch.tensor([float(torch.cat([_dsa_abslog(m).reshape(-1) for m in mats]).double().var())
                                  for mats in scores])
        metric = dsa_published_metric(scores)
        defined = int(torch.isfinite(torch.asin(torch.atan(variances))).sum())
        print(f"{model}: var of ln|W| per block {float(variances.min()):.3f} .. {float(variances.max()):.3f} "
              f"(tan(1) = {math.tan(1):.3f}); asin(atan(var)) defined in {defined} of {len(scores)} blocks; "
              f"importance after the sanitiser {'flat (uniform ratios)' if bool((metric == metric[0]).all()) else 'varies'}")


if __name__ == "__main__":
    main()
