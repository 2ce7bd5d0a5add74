"""The server's errors: one JSON shape for every refusal, ``{"error": "<what to change>", "error_type": "<kind>"}``.

The shape is text-embeddings-inference's (``ErrorResponse``); the Hugging Face Inference API and its clients read
``error`` (``huggingface_hub`` puts it in the ``HfHubHTTPError`` it raises). `error_type` is one of :data:`KINDS`,
which are also the `kind` label of the ``prefix_tuning_serve_errors_total`` metric. The status codes follow TEI and
the Inference API: 422 for a body that is not what the route takes, 413 for too much input, 404 for an unknown
adapter route, 429 when the queue is full, 503 while shutting down, 500 when the batch holding the request failed.
"""

from __future__ import annotations

import json

from ..errors import SERVE_ERROR_KINDS as KINDS  # re-exported for the serving modules
from ..errors import ServeError


__all__ = ["KINDS", "ServeError", "error_body"]


def error_body(kind: str, message: str) -> bytes:
    return json.dumps({"error": message, "error_type": kind}).encode()
