"""The server's errors: one JSON shape for every refusal, ``{"error": "<what to change>", "error_type": "<kind>"}``.

The shape is text-embeddings-inference's (``ErrorResponse``); the Hugging Face Inference API and its clients read
``error`` (``huggingface_hub`` puts it in the ``HfHubHTTPError`` it raises). `error_type` is one of :data:`KINDS`,
which are also the `kind` label of the ``prefix_tuning_serve_errors_total`` metric. The status codes follow TEI and
the Inference API: 422 for a body that is not what the route takes, 413 for too much input, 404 for an unknown
adapter route, 429 when the queue is full, 503 while shutting down, 500 when the batch holding the request failed.
"""

from __future__ import annotations

import json


__all__ = ["KINDS", "ServeError", "error_body"]

KINDS = {
    "malformed_json": 400,  # the body is not JSON
    "unauthorized": 401,  # missing or wrong API key
    "not_found": 404,  # no such route
    "unknown_adapter": 404,  # POST /adapters/{name} of a name not loaded (in a /predict body: 422)
    "method_not_allowed": 405,
    "body_timeout": 408,  # the client sent its body too slowly
    "too_large": 413,  # too many inputs, too many characters, too large a body
    "validation": 422,  # the body is JSON but not what the route takes
    "overloaded": 429,  # more rows waiting than --max_queued_rows
    "backend": 500,  # the batch holding the request failed
    "shutting_down": 503,  # SIGTERM received: no new requests
    "disconnected": 499,  # the client hung up before its answer (nothing is sent; 499 as nginx logs it)
}


class ServeError(Exception):
    """A request refused with `status` and a JSON body naming the problem (module docstring)."""

    def __init__(self, kind: str, message: str, status: int | None = None):
        super().__init__(message)
        self.kind, self.message = kind, message
        self.status = status if status is not None else KINDS[kind]


def error_body(kind: str, message: str) -> bytes:
    return json.dumps({"error": message, "error_type": kind}).encode()
