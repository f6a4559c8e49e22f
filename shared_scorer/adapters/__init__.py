"""What both framework adapters (``frugal_langchain``, ``frugal_llamaindex``) share, framework-free.

:mod:`shared_scorer.adapters.assemble` builds an adapter model's cascade and its settings from a saved
strategy, so that the two adapters cannot build different cascades from the same settings.
"""
