"""Serving the OpenAI chat-completions API: ``frugal serve`` and the replay server, on one wire encoder.

    wire.py       the one OpenAI wire encoder (completion bodies, stream chunks, usage, errors)
    gateway.py    ``frugal serve``, framework-free: keys and scopes, request validation, error statuses
    replay.py     the replay server: recorded answers, scripted scenarios (scenarios.py), injected faults
    _http.py      the replay server's threading HTTP side
    testing.py    ``replay_server(records, scenarios)`` and ``make_record(...)`` for tests

``python -m shared_scorer.server`` runs the replay server (the same as ``frugal replay-server``). This
package imports nothing on its own: import the module you need.
"""
