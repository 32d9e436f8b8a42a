"""How a result is measured, written once for search.py's report and apply.py.

measurer.py: the requests a model answers (final-pruner perplexities, baselines, the dense row),
    and final-pruner measurement with equal allocations pruned once;
session.py: those requests in this process, on an EvaluationSession (the search's pool answers
    them through dsa/search/pool_measurer.py);
paired.py: the paired test of two prunes over the same windows (mean log-ratio, standard error);
amplitude.py, grids.py: choosing a constant on a grid (the lowest, or a paired test);
atp.py: ATP's lambda, the strongest fixed baseline's, chosen on validation with the final pruner;
tuning.py: a function's ratios and amplitude on a new model;
replay.py: the held-out tables; one_model.py: apply.py's runs;
allocation.py: an allocation's ratios without pruning (apply.py export), from the architecture
    alone when it reads only depth or shapes;
score.py: the multi-model score and the rank check.
"""
