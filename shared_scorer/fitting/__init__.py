"""Offline learning, never imported on the request path (numpy, and torch inside functions, are fine here).

    data.py       recorded answers (JSON Lines, validated line by line)
    collect.py    ``frugal collect``: ask every provider every labelled query, grade, record
    grading.py    the metrics that grade an answer against its reference
    search.py     the table of recorded scores, correctness and costs; the search over chains and thresholds
    frontier.py   the Pareto mask and the merging of frontiers
    columns.py    capped columns: ``model@N`` entries searched as extra columns of the table
    crossfit.py   out-of-fold scores (the top-layer design) and the folds
    fit.py        ``frugal fit``: cross-fit, search, save a :class:`~shared_scorer.strategy.Strategy`
    bench.py      ``frugal bench``: fit on train, measure on test

This package imports nothing on its own: import the module you need.
"""
