"""How a result is measured, written once for search.py's report and apply.py.

measurer.py: the requests a model answers (final-pruner perplexities, baselines, the dense row),
    and final-pruner measurement with equal allocations pruned once;
session.py: those requests in this process, on an EvaluationSession (the search's pool answers
    them through dsa/search/pool_measurer.py);
amplitude.py, grids.py: choosing a constant on a grid (the lowest, or a paired test);
atp.py: ATP's lambda, the strongest fixed baseline's, chosen on validation with the final pruner;
tuning.py: a function's ratios and amplitude on a new model;
replay.py: the held-out tables; one_model.py: apply.py's runs;
score.py: the multi-model score and the rank check.
"""
