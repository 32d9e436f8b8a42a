"""Choosing the reported function with the final pruner instead of the search's proxy.

The search scores candidates with cached Wanda, which can tie two functions (to 0.001 in the
multi-model score) that sequential Wanda, the pruner users run, puts far apart.
With `final_select` = K, the K best distinct allocations of the final population are pruned again
with the final pruner on the training models' validation text, scored the way the search scores
(one model: perplexity; several: the mean over targets of log(ppl / ppl of uniform)), and the
lowest becomes the reported function. Only the training models' validation text is read.
"""
from __future__ import annotations

from dsa.functions.genome import names_of
from dsa.protocol.measurer import final_perplexities
from dsa.protocol.score import multi_model_score


def distinct_best(search, count: int) -> list:
    """The final population's `count` best individuals with distinct allocations (valid only)."""
    chosen, seen = [], set()
    for ind in sorted(search.population, key=lambda i: i.fitness.values[0]):
        if len(chosen) == count:
            break
        if search.allocation_of(ind) is not None and ind.key not in seen:
            seen.add(ind.key)
            chosen.append(ind)
    return chosen


def final_select(search, measurer, count: int, text: str, windows: int, default_model: str) -> tuple[object, dict]:
    """The individual to report and the record of the choice: the best of the final population's
    `count` best distinct allocations, pruned with the final pruner through `measurer`
    (dsa/protocol/measurer.py) and measured on `text`, `windows` windows; `default_model`: the
    model of a target without one."""
    if count < 2:
        return search.best(), {"count": 0}
    candidates = distinct_best(search, count)
    if len(candidates) < 2:
        return search.best(), {"count": len(candidates)}
    several = len(search.targets) > 1
    routed = []
    for index, target in enumerate(search.targets):
        model = target.group or default_model
        routed += [(model, search.ratios_of(ind, index)) for ind in candidates]
        if several:
            blocks = len(target.units.names) if target.units is not None else len(target.sizes)
            routed.append((model, [target.sparsity] * blocks))
    values = iter(row[text] for row in final_perplexities(measurer, routed, [text], windows))
    per_target = []  # per target: each candidate's final validation perplexity (then uniform's)
    for _ in search.targets:
        per_target.append([next(values) for _ in range(len(candidates) + several)])
    if several:
        scores = [multi_model_score([row[i] for row in per_target], [row[-1] for row in per_target])
                  for i in range(len(candidates))]
    else:
        scores = per_target[0]
    chosen = min(range(len(candidates)), key=scores.__getitem__)
    record = {"count": len(candidates), "text": text, "chosen": chosen,
              "candidates": [{"genome": names_of(ind), "search_score": ind.fitness.values[0], "final_score": score,
                              "final_validation": {t.namespace.rstrip("|") or default_model: row[i]
                                                   for t, row in zip(search.targets, per_target)}}
                             for i, (ind, score) in enumerate(zip(candidates, scores))]}
    return candidates[chosen], record
