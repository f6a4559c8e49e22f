"""A local OpenAI-compatible server that replays recorded answers, for tests and offline benchmarks.

``POST /v1/chat/completions`` answers with the recorded answer of the request's model to the text of its
last user message (with the recorded token counts as ``usage``), streamed or not; scripted ``scenarios``
return tool calls; faults can be injected per model from Python (:meth:`ReplayServer.set_fault`) or over
HTTP (``POST /admin/faults`` ``{"model", "kind", "count"}``, ``DELETE /admin/faults``):

* ``"429"``: HTTP 429 with a rate-limit error and ``retry-after: 0``;
* ``"500"``: HTTP 500 with a server error;
* ``"hang"``: waits ``hang_seconds`` before answering (other requests are served meanwhile);
* ``"malformed"``: HTTP 200, ``application/json``, but a body that is not valid JSON;
* ``"garbage"``: HTTP 200, valid JSON without ``choices``.
"""

from shared_scorer.replay._protocol import FAULT_KINDS, Scenario
from shared_scorer.replay.server import ReplayRequest, ReplayServer

__all__ = ["FAULT_KINDS", "ReplayRequest", "ReplayServer", "Scenario"]
