"""One reading of a Hub or network failure, for every step that talks to the Hub.

Downloads (dataset archive, config, tokenizer, weights, an adapter named by its Hub id) run inside
`hub_step(what, advice)`: a failure of the Hub or of the network becomes one line that names the step, the cause and
how to go on, instead of a traceback. A name that does not exist or that the token may not read (HTTP 401/403/404) is
the user's to fix: `ArgumentError`, exit code 2. A Hub that cannot be reached, does not answer in time or answers
with a server error is not: `HubUnavailableError`, exit code 1. Any other exception passes through unchanged.

The push (`hub.push_run`, the checkpoint pushes) describes its failures with `describe_push_failure`, from the same
table of HTTP statuses (`STATUS_HINTS`, once worded for reading and once for writing): every Hub error the package
reports is worded here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .errors import ArgumentError, HubUnavailableError


__all__ = [
    "DATA_ADVICE",
    "MODEL_ADVICE",
    "STATUS_HINTS",
    "HubUnavailableError",
    "bound_hub_timeouts",
    "describe_hub_failure",
    "describe_push_failure",
    "hub_step",
]

# huggingface_hub's HTTP client waits for an answer without limit (timeout=None), and transformers' `from_pretrained`
# asks the Hub for the revision through it, so a Hub that accepts the connection and never answers makes a run hang
# for ever. The script bounds the wait: seconds to connect, and seconds without a byte while reading an answer.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0

_OFFLINE_ADVICE = "with the files already in your Hugging Face cache, run again with HF_HUB_OFFLINE=1"
DATA_ADVICE = f"{_OFFLINE_ADVICE}, or train from local files with --train_file (e.g. Sentences_AllAgree.txt)"
MODEL_ADVICE = f"{_OFFLINE_ADVICE}, or pass a local folder to --model_name_or_path"
# What the user can change for each refusal of the Hub: (when downloading, when pushing); None where the status has no
# hint of its own. From 500 on the Hub failed, not the user's input (SERVER_ERROR: for any status from 500).
SERVER_ERROR = 500
STATUS_HINTS = {
    401: (
        "the token was refused: pass a valid token (--token, or `hf auth login`)",
        "the token was refused: pass a valid --hub_token or run `hf auth login`",
    ),
    403: (
        "access denied: for a gated or private repo, accept its terms on the Hub and pass a token that may read it",
        "the token may not write there: use a token with write access, or a --hub_model_id in your own namespace "
        "(the name may belong to someone else)",
    ),
    404: (
        "not found: check the name (a private repo also needs a token)",
        "the repo or branch was not found: check --hub_model_id and --hub_revision",
    ),
    409: (None, "the name conflicts with an existing repo: choose another --hub_model_id"),
    412: (None, "the branch moved during the push: retry"),
    429: ("too many requests: wait a little and run again", "too many requests: wait a little"),
    SERVER_ERROR: ("a server error", "the Hub had an internal error: try again later"),
}
DOWNLOAD, PUSH = 0, 1  # the columns of STATUS_HINTS


def _hint(status: int, column: int) -> str | None:
    return STATUS_HINTS.get(min(status, SERVER_ERROR), (None, None))[column]


def _bound_timeouts(request) -> None:
    """A request hook: fill in the timeouts a caller left unbounded (huggingface_hub passes `timeout=None`)."""
    timeout = dict(request.extensions.get("timeout") or {})
    for key, bound in (("connect", CONNECT_TIMEOUT), ("read", READ_TIMEOUT)):
        if timeout.get(key) is None:
            timeout[key] = bound
    request.extensions["timeout"] = timeout


def bound_hub_timeouts() -> None:
    """Make huggingface_hub's shared HTTP client of this process give up on a silent Hub (then retried as usual).

    A timeout set on the client would not do: `HfApi.model_info`, which transformers calls for every
    `from_pretrained`, passes `timeout=None` explicitly, so the bound is put on each request by a request hook.
    """
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    def client_factory():
        client = default_client_factory()
        client.event_hooks["request"].append(_bound_timeouts)
        return client

    set_client_factory(client_factory)


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def describe_hub_failure(err: BaseException) -> tuple[str, bool] | None:
    """`(cause on one line, the user's to fix)` when `err` comes from the Hub or the network, else None.

    The whole exception chain is read: transformers and huggingface_hub wrap the cause (an `OSError` around a
    `LocalEntryNotFoundError` around the connection error), and the innermost cause says most.
    """
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    chain = list(_chain(err))
    for cause in chain:
        status = _status(cause) if isinstance(cause, HfHubHTTPError) or hasattr(cause, "response") else None
        if status is not None:
            if status >= SERVER_ERROR:
                return f"the Hub answered HTTP {status} ({_hint(status, DOWNLOAD)}): try again later", False
            if _hint(status, DOWNLOAD) is not None:
                return f"HTTP {status}: {_hint(status, DOWNLOAD)}", status != 429
    for cause in chain:
        name = type(cause).__name__
        if isinstance(cause, TimeoutError) or "Timeout" in name:
            return f"no answer from {_endpoint()} in time (network timeout)", False
        if isinstance(cause, OfflineModeIsEnabled):
            return "HF_HUB_OFFLINE=1 is set and the files are not in the local cache", True
        if isinstance(cause, ConnectionError) or name in ("ConnectError", "NetworkError", "RemoteProtocolError"):
            detail = " ".join(str(cause).split()) or name
            return f"cannot connect to {_endpoint()} ({detail})", False
    # No cause at all: huggingface_hub raises this in offline mode when the cache does not hold the file.
    if type(chain[-1]).__name__ == "LocalEntryNotFoundError":
        return "the files are not in the local cache and the Hub was not asked (offline mode)", True
    return None


def describe_push_failure(err: BaseException) -> str:
    """What went wrong while creating a repo or committing to it, on one line, with what to do about it."""
    from huggingface_hub.errors import HfHubHTTPError, HTTPError

    response = getattr(err, "response", None) if isinstance(err, HfHubHTTPError) else None
    if response is None:
        detail = " ".join(str(err).split()) or type(err).__name__
        if isinstance(err, (HTTPError, ConnectionError)):
            return f"cannot reach the Hub at {_endpoint()} ({detail}); check the network connection"
        return detail
    status = response.status_code
    server = " ".join((getattr(err, "server_message", None) or str(err).splitlines()[0]).split())
    return f"HTTP {status} ({server}); {_hint(status, PUSH) or 'see above'}"


@contextlib.contextmanager
def hub_step(what: str, advice: str, any_os_error: bool = False) -> Iterator[None]:
    """Run a step that may download from the Hub; its Hub or network failure becomes one line.

    `what` names the step ("downloading the dataset takala/financial_phrasebank"), `advice` how to go on without
    the Hub (local files, the cache); it is given when the Hub could not be reached, not when it refused.
    `any_os_error`: report every `OSError` as this step's failure, for steps whose library hides the cause
    (transformers turns a failed weights download into "does not appear to have a file named ...").
    """
    try:
        yield
    except Exception as err:  # noqa: BLE001 - anything that is no Hub failure is raised again unchanged
        described = describe_hub_failure(err)
        if described is None and any_os_error and isinstance(err, OSError):
            described = " ".join(str(err).split()), False
        if described is None:
            raise
        cause, users_to_fix = described
        if users_to_fix:  # the cause says what to change
            raise ArgumentError(f"{what} failed: {cause}.") from err
        raise HubUnavailableError(f"{what} failed: {cause}. {advice[:1].upper()}{advice[1:]}.") from err
