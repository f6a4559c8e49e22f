"""What both framework adapters (``frugal_langchain``, ``frugal_llamaindex``) share, framework-free.

:mod:`shared_scorer.adapters.settings` holds :class:`~shared_scorer.adapters.settings.CascadeSettings`, the
one settings model both adapter models are built on (every field, the unknown-argument check, building the
cascade, ``from_strategy``); :mod:`shared_scorer.adapters.assemble` takes those settings from a saved strategy.
So the two adapters cannot build different cascades from the same settings.
"""
