"""Every error this package raises on purpose, with when it is raised and the exit code the command line gives it.

The ground floor of the package, with :mod:`run_files`: no torch, transformers or other third-party import
(tests/test_ground_floor.py), so any module, and any program that only reads a run folder, can import it.
`cli.cli` turns each of them into one line on stderr (`error: ...`, no traceback; a bare `--debug` shows it) and
the exit code below (docs/troubleshooting.md). Moved here from `arguments`, `network`, `hub` and `trainer`, which
still export them under their old names.
"""

from __future__ import annotations


__all__ = [
    "SERVE_ERROR_KINDS",
    "ArgumentError",
    "BatchFailedError",
    "HubUnavailableError",
    "PushError",
    "ServeError",
    "SettingsError",
    "TrainingDivergedError",
]


class ArgumentError(ValueError):
    """A problem with the user's arguments or input files; the message says what to change. Exit code 2.

    Raised before any weight is loaded or file written wherever that can be known then (flags, recipes, data files,
    model and dataset names, the output folder), and by the Hub steps when the Hub refuses a name or a token.
    """


class HubUnavailableError(RuntimeError):
    """The Hub, or the network to it, failed (not the user's input): one line, exit code 1.

    Raised by `network.hub_step` around a download when the Hub cannot be reached, does not answer in time or
    answers with a server error; the message names the step and how to go on without the Hub.
    """


class PushError(RuntimeError):
    """Publishing failed; the message is one line that says what failed and how to retry the push alone. Exit code 1.

    Raised by `hub.push_run` (a Hub or network error while creating the repo or committing) and by its secret check
    (a file to upload holds the Hub token: nothing is pushed).
    """


class TrainingDivergedError(RuntimeError):
    """The training loss (or a trainable weight) became NaN or infinite; the message names the step and the last good
    checkpoint. Exit code 1. Raised by `PrefixTuningTrainer`; nothing more is saved."""


# --- prefix-tuning serve (prefix_tuning_utils/serving): refusals of one HTTP request, never of the server ---

# The kind of a refused request (the `error_type` of its JSON body, the `kind` label of the errors metric) and its
# HTTP status code; the codes follow text-embeddings-inference and the Hugging Face Inference API.
SERVE_ERROR_KINDS = {
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
    """A request refused with an HTTP `status` and a JSON body naming the problem: `{"error": message, "error_type":
    kind}` (serving.errors). Raised by the server's routes and batcher for one request; the server goes on."""

    def __init__(self, kind: str, message: str, status: int | None = None):
        super().__init__(message)
        self.kind, self.message = kind, message
        self.status = status if status is not None else SERVE_ERROR_KINDS[kind]


class BatchFailedError(RuntimeError):
    """The batch that held some of a request's rows failed; the cause is chained. Raised by the server's batcher
    (serving.batching) to the requests of that batch only: each gets HTTP 500 with a JSON error; the server goes on."""


class SettingsError(ValueError):
    """A setting of the server (`serving.ServeSettings`) with a value it cannot use; `setting` names it, `problem` says
    what to change. Raised when the settings are built; the command line words it as the flag's ArgumentError:
    exit code 2."""

    def __init__(self, setting: str, problem: str):
        super().__init__(f"{setting} {problem}")
        self.setting, self.problem = setting, problem
