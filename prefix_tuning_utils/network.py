"""One reading of a Hub or network failure, for every step that talks to the Hub, and a bound on how long it waits.

Downloads (dataset archive, config, tokenizer, weights, an adapter named by its Hub id) run inside
`hub_step(what, advice)`: a failure of the Hub or of the network becomes one line that names the step, the cause and
how to go on (`model_advice`, `data_advice`: how to fill the cache and run offline, or local files), instead of a
traceback. A name that does not exist or that the token may not read (HTTP 401/403/404) is the user's to fix:
`ArgumentError`, exit code 2. A Hub that cannot be reached, does not answer in time or answers with a server error is
not: `HubUnavailableError`, exit code 1. Any other exception passes through unchanged.

How long a step waits (`bound_hub_timeouts` puts request hooks on huggingface_hub's shared HTTP client):

* a host name that does not resolve fails the first request at once, after one DNS lookup of at most
  `DNS_TIMEOUT` seconds, instead of huggingface_hub's 5 retries with 23 s of pauses (skipped behind a proxy);
* each request waits at most the user's `HF_HUB_ETAG_TIMEOUT` / `HF_HUB_DOWNLOAD_TIMEOUT` (10 s each by default);
  huggingface_hub's own retry of a failed metadata request waits 60 s per try whatever they say;
* a step gives up once `STEP_WAITS` of those timeouts have passed without any answer from the Hub, instead of after
  every retry: a silent Hub (it accepts the connection and never answers) costs about 20 s at the defaults, 7 s with
  3-second timeouts. Any answer, even an error, starts the count again, so a slow download that makes progress
  is never cut.

The push (`hub.push_run`, the checkpoint pushes) describes its failures with `describe_push_failure`, from the same
table of HTTP statuses (`STATUS_HINTS`, once worded for reading and once for writing): every Hub error the package
reports is worded here.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

from huggingface_hub.errors import OfflineModeIsEnabled

from .errors import ArgumentError, HubUnavailableError


__all__ = [
    "STATUS_HINTS",
    "HubUnavailableError",
    "HostNotFoundError",
    "HubStepTimeoutError",
    "bound_hub_timeouts",
    "data_advice",
    "describe_hub_failure",
    "describe_push_failure",
    "hub_step",
    "model_advice",
]

# huggingface_hub's HTTP client waits for an answer without limit (timeout=None), and transformers' `from_pretrained`
# asks the Hub for the revision through it, so a Hub that accepts the connection and never answers makes a run hang
# for ever. The script bounds the wait: seconds to connect, and seconds without a byte while reading an answer.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
DNS_TIMEOUT = 5.0  # seconds for the one lookup of the Hub's host name
STEP_WAITS = 2  # a step ends after this many request timeouts without any answer from the Hub


def _cache_path(cache_dir: str | None) -> str:
    from huggingface_hub import constants

    return cache_dir or constants.HF_HUB_CACHE


def _fill_the_cache(download: str, cache_dir: str | None) -> str:
    where = f" --cache-dir {cache_dir}" if cache_dir else ""
    return (
        f"to run without the Hub, put the files in the Hugging Face cache first: run `{download}{where}` on a machine "
        f"with network and copy its cache folder to {_cache_path(cache_dir)} here (HF_HOME sets where it is), then "
        "run again with HF_HUB_OFFLINE=1"
    )


def model_advice(model: str, cache_dir: str | None = None) -> str:
    """How to go on without the Hub with this model: fill the cache, or a local folder."""
    return f"{_fill_the_cache(f'hf download {model}', cache_dir)}; or pass a local folder to --model_name_or_path"


def data_advice(repo: str, cache_dir: str | None = None) -> str:
    """How to go on without the Hub with this dataset repo: fill the cache, or local files."""
    return (
        f"{_fill_the_cache(f'hf download {repo} --repo-type dataset', cache_dir)}; or train from local files with "
        "--train_file (e.g. Sentences_AllAgree.txt)"
    )


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


class HostNotFoundError(OfflineModeIsEnabled):
    """The Hub's host name does not resolve.

    An `OfflineModeIsEnabled` (as is `HubStepTimeoutError`): huggingface_hub does not retry it and falls back to the
    cache, so files already there still load and the others fail at once. `hub_step`'s line says what happened.
    """


class HubStepTimeoutError(OfflineModeIsEnabled):
    """A step waited STEP_WAITS timeouts without any answer from the Hub (an `OfflineModeIsEnabled`, see above)."""


class _Step:
    """The step in progress (`hub_step`): how long it may wait without an answer, and until when."""

    budget: float | None = None
    deadline: float | None = None


_lookups: dict[str, str | None] = {}  # host name -> None if it resolved in this process, else why not


def _user_timeouts() -> tuple[float, float]:
    """(metadata, download) timeouts in seconds: HF_HUB_ETAG_TIMEOUT and HF_HUB_DOWNLOAD_TIMEOUT (10 s each)."""
    from huggingface_hub import constants

    return float(constants.HF_HUB_ETAG_TIMEOUT), float(constants.HF_HUB_DOWNLOAD_TIMEOUT)


def _behind_proxy(url) -> bool:
    """Requests to `url` go through a proxy (HTTP(S)_PROXY, ALL_PROXY; not NO_PROXY): the proxy resolves the host."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get(url.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(url.host)


def _lookup(host: str, port: int) -> str | None:
    """None if `host` resolves within DNS_TIMEOUT seconds, else why not."""
    outcome: list[OSError | None] = []

    def lookup():
        try:
            socket.getaddrinfo(host, port)
            outcome.append(None)
        except OSError as err:
            outcome.append(err)

    thread = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)  # abandoned if DNS hangs
    thread.start()
    thread.join(DNS_TIMEOUT)
    if not outcome:
        return f"the host name {host} did not resolve within {DNS_TIMEOUT:g} s"
    return None if outcome[0] is None else f"the host name {host} does not resolve: {outcome[0]}"


def _check_host_resolves(url) -> None:
    """Look the host name up once per process; raise HostNotFoundError (every time) if it does not resolve."""
    if url.host not in _lookups:
        if _behind_proxy(url):
            return
        _lookups[url.host] = _lookup(url.host, url.port or (443 if url.scheme == "https" else 80))
    if _lookups[url.host] is not None:
        raise HostNotFoundError(_lookups[url.host])


def _bound_request(request) -> None:
    """A request hook: the DNS check, the user's timeouts, and the step's deadline (module doc)."""
    _check_host_resolves(request.url)
    timeout = dict(request.extensions.get("timeout") or {})
    for key, bound in (("connect", CONNECT_TIMEOUT), ("read", READ_TIMEOUT)):
        if timeout.get(key) is None:
            timeout[key] = bound
    if _Step.deadline is not None:
        if time.monotonic() > _Step.deadline:
            raise HubStepTimeoutError(f"{_Step.budget:g} s without an answer")
        etag, download = _user_timeouts()
        wait = etag if request.method == "HEAD" else max(etag, download)
        timeout = {key: wait if value is None else min(value, wait) for key, value in timeout.items()}
    request.extensions["timeout"] = timeout


def _answered(response) -> None:
    """A response hook: any answer is progress, so the step's count of time without one starts again."""
    if _Step.deadline is not None:
        _Step.deadline = time.monotonic() + _Step.budget


def bound_hub_timeouts() -> None:
    """Put the bounds of the module doc on huggingface_hub's shared HTTP client of this process.

    A timeout set on the client would not do: `HfApi.model_info`, which transformers calls for every
    `from_pretrained`, passes `timeout=None` explicitly, so the bound is put on each request by a request hook.
    """
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    def client_factory():
        client = default_client_factory()
        client.event_hooks["request"].append(_bound_request)
        client.event_hooks["response"].append(_answered)
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
    from huggingface_hub.errors import HfHubHTTPError

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
        if isinstance(cause, HubStepTimeoutError):
            etag, download = _user_timeouts()
            return (
                f"no answer from {_endpoint()} in time (network timeout): {cause}; HF_HUB_ETAG_TIMEOUT={etag:g} and "
                f"HF_HUB_DOWNLOAD_TIMEOUT={download:g} (seconds) set how long each request waits"
            ), False
        if isinstance(cause, HostNotFoundError):
            return f"cannot connect to {_endpoint()} ({cause})", False
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
    the Hub (`model_advice`, `data_advice`); it is given when the Hub could not be reached, and when the files are
    not in the cache in offline mode, not when the Hub refused. `any_os_error`: report every `OSError` as this step's
    failure, for steps whose library hides the cause (transformers turns a failed weights download into "does not
    appear to have a file named ..."). The step waits at most STEP_WAITS timeouts without an answer (module doc).
    """
    outer = (_Step.budget, _Step.deadline)
    _Step.budget = STEP_WAITS * max(_user_timeouts())
    _Step.deadline = time.monotonic() + _Step.budget
    try:
        yield
    except Exception as err:  # noqa: BLE001 - anything that is no Hub failure is raised again unchanged
        described = describe_hub_failure(err)
        if described is None and any_os_error and isinstance(err, OSError):
            described = " ".join(str(err).split()), False
        if described is None:
            raise
        cause, users_to_fix = described
        if users_to_fix and not _is_offline_miss(err):  # the cause says what to change
            raise ArgumentError(f"{what} failed: {cause}.") from err
        error = ArgumentError if users_to_fix else HubUnavailableError
        raise error(f"{what} failed: {cause}. {advice[:1].upper()}{advice[1:]}.") from err
    finally:
        _Step.budget, _Step.deadline = outer


def _is_offline_miss(err: BaseException) -> bool:
    """Offline mode (HF_HUB_OFFLINE=1) and the files are not in the cache: the advice says how to put them there."""
    chain = list(_chain(err))
    ours = (HostNotFoundError, HubStepTimeoutError)
    return any(isinstance(c, OfflineModeIsEnabled) and not isinstance(c, ours) for c in chain) or (
        type(chain[-1]).__name__ == "LocalEntryNotFoundError"
    )
