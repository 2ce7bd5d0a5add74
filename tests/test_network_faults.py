"""Every step that downloads from the Hub fails in one line when the Hub or the network fails.

Loopback servers refuse the connection, hang, or answer an HTTP error (tests/faulty_hub.py); the script's `cli()` runs
in-process against them. huggingface_hub's own retries are kept but made quick (no sleeping between tries, short
timeouts), so a hanging Hub costs seconds here, not the minutes it costs a user.
"""

from __future__ import annotations

import json
import time
import types

import pytest

from prefix_tuning_utils import cli, network
from prefix_tuning_utils.network import describe_hub_failure
from tests.conftest import REPO
from tests.fake_hub import FakeHub, patch_hf_endpoint
from tests.faulty_hub import faulty_hub
from tests.helpers import run_cli


MODES = ["refuse", pytest.param("hang", marks=pytest.mark.slow), 500, 401, 403, 404]  # a hang costs seconds
# What the one line says for each failure, and the exit code: the network's fault 1, the user's to fix 2.
EXPECTED = {
    "refuse": ("cannot connect to http://127.0.0.1:", 1),
    "hang": ("in time (network timeout)", 1),
    500: ("HTTP 500 (a server error): try again later", 1),
    401: ("HTTP 401: the token was refused", 2),
    403: ("HTTP 403: access denied", 2),
    404: ("HTTP 404: not found", 2),
}


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch, tmp_path):
    """huggingface_hub retries a failed download 5 times with 1-8 s pauses and 60 s timeouts: make that quick."""
    from huggingface_hub import constants, file_download
    from huggingface_hub.utils import _http

    no_sleep = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    no_sleep.sleep = lambda seconds: None
    monkeypatch.setattr(_http, "time", no_sleep)
    monkeypatch.setattr(file_download, "_ETAG_RETRY_TIMEOUT", 0.5)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 0.5)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.5)
    monkeypatch.setattr(network, "CONNECT_TIMEOUT", 0.5)
    monkeypatch.setattr(network, "READ_TIMEOUT", 0.5)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # nothing cached
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def assert_one_line(err: str, step: str, mode, code: int) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    line = lines[0]
    expected_text, expected_code = EXPECTED[mode]
    assert step in line and expected_text in line, line
    assert code == expected_code, (code, line)
    if expected_code == 1:  # the Hub could not be reached: how to go on without it
        assert "HF_HUB_OFFLINE=1" in line, line
    return line


def tiny_training_args(out, *extra):
    return ["--output_dir", out, "--do_train", "--report_to", "none", "--max_steps", "1", *extra]


@pytest.mark.parametrize("mode", MODES)
def test_dataset_download(mode, tmp_path, capsys):
    out = tmp_path / "out"
    with faulty_hub(mode) as url, patch_hf_endpoint(url):
        code, err = run_cli(
            ["--model_name_or_path", REPO / "examples" / "tiny-t5", "--dataset_name", "financial_phrasebank",
             *tiny_training_args(out)],
            capsys,
        )  # fmt: skip
    line = assert_one_line(err, "downloading the dataset financial_phrasebank failed", mode, code)
    if code == 1:
        assert "--train_file" in line
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("mode", MODES)
def test_model_config_download(mode, tmp_path, capsys):
    out = tmp_path / "out"
    with faulty_hub(mode) as url, patch_hf_endpoint(url):
        code, err = run_cli(
            ["--model_name_or_path", "someone/t5-model", "--train_file", REPO / "examples" / "quickstart.txt",
             "--label_words", "negative,neutral,positive", *tiny_training_args(out)],
            capsys,
        )  # fmt: skip
    line = assert_one_line(err, "loading the model config of someone/t5-model failed", mode, code)
    if code == 1:
        assert "pass a local folder to --model_name_or_path" in line
    assert not out.exists()


@pytest.mark.parametrize("mode", MODES)
def test_tokenizer_download(mode, tmp_path, capsys):
    out = tmp_path / "out"
    with faulty_hub(mode) as url, patch_hf_endpoint(url):
        code, err = run_cli(
            ["--model_name_or_path", REPO / "examples" / "tiny-t5", "--tokenizer_name", "someone/tokenizer",
             "--train_file", REPO / "examples" / "quickstart.txt", "--label_words", "negative,neutral,positive",
             *tiny_training_args(out)],
            capsys,
        )  # fmt: skip
    assert_one_line(err, "loading the tokenizer of someone/tokenizer failed", mode, code)
    assert not out.exists()


@pytest.mark.parametrize("mode", MODES)
def test_adapter_named_by_hub_id_for_predict(mode, tmp_path, capsys):
    """--do_predict with an adapter's Hub id: a failing Hub must not pass for "this is no adapter"."""
    test_file = tmp_path / "news.txt"
    test_file.write_text("Profit rose .\n", encoding="utf-8")
    out = tmp_path / "out"
    with faulty_hub(mode) as url, patch_hf_endpoint(url):
        code, err = run_cli(
            ["--model_name_or_path", "someone/adapter", "--test_file", test_file, "--do_predict",
             "--output_dir", out, "--report_to", "none"],
            capsys,
        )  # fmt: skip
    # A repo the Hub does not know (404) is no adapter: the next step, loading it as a model, says it is not found.
    step = "loading the model config of someone/adapter" if mode == 404 else "looking up someone/adapter on the Hub"
    assert_one_line(err, f"{step} failed", mode, code)
    assert not out.exists()


@pytest.mark.parametrize("status", [500, 403])
def test_base_model_weights_download(status, tmp_path, tiny_t5_dir, capsys):
    """The config and tokenizer come through; the weights fail."""
    out = tmp_path / "out"
    with FakeHub() as hub:
        for path in tiny_t5_dir.iterdir():
            hub.add_file("someone/tiny-t5", path.name, path.read_bytes())
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
            hub.fail_download[name] = status
        code, err = run_cli(
            ["--model_name_or_path", "someone/tiny-t5", "--train_file", REPO / "examples" / "quickstart.txt",
             "--label_words", "negative,neutral,positive", *tiny_training_args(out)],
            capsys,
        )  # fmt: skip
    # transformers hides the HTTP status of a failed weights download ("does not appear to have a file named ..."),
    # so the step reports what it was told, as a failure to download (exit code 1).
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "downloading the weights of someone/tiny-t5 failed: " in line and "HF_HUB_OFFLINE=1" in line, line
    assert code == 1
    assert not (out / "adapter_model.safetensors").exists() and not (out / "all_results.json").exists(), line


def test_adapter_from_the_hub_still_loads_when_the_hub_works(tmp_path, tiny_t5_dir, capsys):
    """The other side of the adapter test: the same command against a working Hub scores the file."""
    adapter = tmp_path / "adapter"
    cli.main(
        ["--model_name_or_path", str(tiny_t5_dir), "--train_file", str(REPO / "examples" / "quickstart.txt"),
         "--label_words", "negative,neutral,positive", "--output_dir", str(adapter), "--do_train",
         "--max_steps", "1", "--report_to", "none"]
    )  # fmt: skip
    test_file = tmp_path / "news.txt"
    test_file.write_text("Profit rose .\nSales fell .\n", encoding="utf-8")
    with FakeHub() as hub:
        for path in adapter.iterdir():
            if path.is_file():
                hub.add_file("someone/adapter", path.name, path.read_bytes())
        cli.main(
            ["--model_name_or_path", "someone/adapter", "--test_file", str(test_file), "--do_predict",
             "--output_dir", str(tmp_path / "out"), "--report_to", "none"]
        )  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [row["text"] for row in rows] == ["Profit rose .", "Sales fell ."]
    assert all(row["label"] in ("negative", "neutral", "positive") for row in rows)


def test_other_errors_are_not_taken_for_hub_failures():
    assert describe_hub_failure(ValueError("bad value")) is None
    assert describe_hub_failure(OSError("disk full")) is None


def test_a_silent_hub_request_gives_up_after_the_bound(monkeypatch):
    """The bound itself, in the fast suite: after `bound_hub_timeouts()`, a request of huggingface_hub's shared
    client to a server that accepts and never answers fails after READ_TIMEOUT (0.5 s here), even when the caller
    asks for no timeout at all (as `HfApi.model_info` does)."""
    import threading

    from huggingface_hub.utils import get_session

    network.bound_hub_timeouts()
    outcome: dict = {}

    def request(url):
        started = time.monotonic()
        try:
            get_session().get(f"{url}/api/models/someone/model", timeout=None)
        except Exception as err:  # noqa: BLE001 - the test reads which one
            outcome["error"] = err
        outcome["seconds"] = time.monotonic() - started

    with faulty_hub("hang") as url:
        thread = threading.Thread(target=request, args=(url,), daemon=True)
        thread.start()
        thread.join(15)
        assert not thread.is_alive(), "no bound: the request still waited after 15 s"
    assert "Timeout" in type(outcome.get("error")).__name__, outcome
    assert 0.4 < outcome["seconds"] < 10, outcome
    assert describe_hub_failure(outcome["error"])[0].endswith("in time (network timeout)")
