"""Hub access in one place: every single-file download goes through `hub_files`, every Hub error is worded by
`network` (one table of HTTP statuses, read for downloads and for pushes)."""

from __future__ import annotations

import ast

import httpx2  # huggingface_hub's HTTP client: its errors are built from these responses
import pytest
from huggingface_hub.utils import hf_raise_for_status

from prefix_tuning_utils import hub, network
from tests.conftest import REPO


def hub_error(status: int, message: str = "refused by the test"):
    """The error huggingface_hub raises for an answer of `status` (built by its own hf_raise_for_status)."""
    request = httpx2.Request("POST", "https://hub.test/api/repos/create")
    response = httpx2.Response(status, request=request, headers={"X-Error-Message": message})
    with pytest.raises(Exception) as raised:
        hf_raise_for_status(response)
    return raised.value


def imports_of(path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.Attribute) and node.attr == "hf_hub_download":
            names.append(ast.unparse(node))
    return names


def test_hub_files_is_the_only_module_that_downloads_a_file():
    importers = sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "prefix_tuning_utils").rglob("*.py")
        if any(name.endswith("hf_hub_download") for name in imports_of(path))
    )
    assert importers == ["prefix_tuning_utils/hub_files.py"]


@pytest.mark.parametrize(
    "status, expected",
    [
        (401, "HTTP 401 (refused by the test); the token was refused: pass a valid --hub_token or run `hf auth login`"),
        (403, "HTTP 403 (refused by the test); the token may not write there: use a token with write access, or a "
              "--hub_model_id in your own namespace (the name may belong to someone else)"),
        (404, "HTTP 404 (refused by the test); the repo or branch was not found: check --hub_model_id and "
              "--hub_revision"),
        (409, "HTTP 409 (refused by the test); the name conflicts with an existing repo: choose another --hub_model_id"),
        (412, "HTTP 412 (refused by the test); the branch moved during the push: retry"),
        (429, "HTTP 429 (refused by the test); too many requests: wait a little"),
        (503, "HTTP 503 (refused by the test); the Hub had an internal error: try again later"),
        (418, "HTTP 418 (refused by the test); see above"),
    ],
)  # fmt: skip
def test_push_failures_are_worded_by_network(status, expected):
    assert network.describe_push_failure(hub_error(status)) == expected


@pytest.mark.parametrize(
    "status, expected",
    [
        (401, ("HTTP 401: the token was refused: pass a valid token (--token, or `hf auth login`)", True)),
        (404, ("HTTP 404: not found: check the name (a private repo also needs a token)", True)),
        (429, ("HTTP 429: too many requests: wait a little and run again", False)),
        (503, ("the Hub answered HTTP 503 (a server error): try again later", False)),
        (409, None),  # a conflict is no answer to a download: not described as a Hub refusal
    ],
)
def test_download_failures_are_worded_from_the_same_table(status, expected):
    assert network.describe_hub_failure(hub_error(status)) == expected


def test_a_push_that_cannot_reach_the_hub_names_the_endpoint():
    from huggingface_hub import constants

    described = network.describe_push_failure(ConnectionError("[Errno 111] Connection refused"))
    expected = "([Errno 111] Connection refused); check the network connection"
    assert described == f"cannot reach the Hub at {constants.ENDPOINT} {expected}"


def test_hub_keeps_no_wording_of_its_own():
    assert not hasattr(hub, "_describe_failure")
    source = (REPO / "prefix_tuning_utils" / "hub.py").read_text()
    assert "HTTP" not in source.replace("HTTPError", "")
