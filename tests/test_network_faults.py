"""Every step that downloads from the Hub fails in one line when the Hub or the network fails.

Loopback servers refuse the connection, hang, or answer an HTTP error (tests/faulty_hub.py); the script's `cli()` runs
in-process against them. huggingface_hub's own retries are kept but made quick (no sleeping between tries, short
timeouts), so a hanging Hub costs seconds here, not the minutes it costs a user.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import threading
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
        assert "HF_HUB_OFFLINE=1" in line and "on a machine with network" in line, line
        assert "HF_HOME sets where it is" in line, line
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


@pytest.mark.slow  # 8 answers of 1.5 s
def test_a_slow_hub_that_answers_is_not_cut(tmp_path, tiny_t5_dir, monkeypatch):
    """Every answer takes 1.5 s, under the 2-second timeouts: the tokenizer step's 8 requests take 12 s, three times
    its budget (2 waits: 4 s), but each answer is progress, so the step goes on: the waits bound silence, not
    downloads."""
    from huggingface_hub import constants
    from transformers import AutoTokenizer

    from prefix_tuning_utils.arguments import ArgumentError, ModelArguments
    from prefix_tuning_utils.modeling import get_tokenizer

    for name in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
        monkeypatch.setattr(constants, name, 2)
    monkeypatch.setattr(network, "CONNECT_TIMEOUT", 2)
    monkeypatch.setattr(network, "READ_TIMEOUT", 2)
    network.bound_hub_timeouts()  # as cli.main does
    with FakeHub() as hub:
        for path in tiny_t5_dir.iterdir():
            hub.add_file("someone/tiny-t5", path.name, path.read_bytes())
        with contextlib.suppress(ArgumentError):  # not timed: the process's one-off requests (agent registry)
            get_tokenizer(ModelArguments(model_name_or_path="someone/unknown"))
        hub.requests.clear()
        hub.answer_delay = 1.5
        with network.hub_step("loading the tokenizer of someone/tiny-t5", "advice"):
            tokenizer = get_tokenizer(ModelArguments(model_name_or_path="someone/tiny-t5"))
        assert (len(hub.requests) - 1) * hub.answer_delay > network.STEP_WAITS * 2  # a request after the budget
        assert [r.path for r in hub.requests if r.method == "GET" and r.path.endswith("/tokenizer.json")]
    local = AutoTokenizer.from_pretrained(tiny_t5_dir)
    assert tokenizer("Profit rose .")["input_ids"] == local("Profit rose .")["input_ids"]  # the repo's, not a default


def test_a_host_that_does_not_resolve_fails_at_once(tmp_path, capsys, caplog):
    """One DNS lookup, no retry: huggingface_hub would try 5 more times with 23 s of pauses (sleeps are skipped
    here, so the retries are counted from its log)."""
    with patch_hf_endpoint("http://no-such-host.invalid"), caplog.at_level("WARNING", logger="huggingface_hub"):
        code, err = run_cli(
            ["--model_name_or_path", "someone/t5-model", "--train_file", REPO / "examples" / "quickstart.txt",
             "--label_words", "negative,neutral,positive", *tiny_training_args(tmp_path / "out")],
            capsys,
        )  # fmt: skip
    (line,) = err.strip().splitlines()
    assert line.startswith(
        "error: loading the model config of someone/t5-model failed: cannot connect to http://no-such-host.invalid "
        "(the host name no-such-host.invalid does not resolve: "
    ), line
    assert code == 1 and "then run again with HF_HUB_OFFLINE=1" in line
    assert "Retrying in" not in caplog.text, caplog.text


@pytest.mark.parametrize("step", ["model", "dataset"])
def test_offline_mode_without_the_files_says_how_to_put_them_in_the_cache(step, tmp_path, capsys, monkeypatch):
    """HF_HUB_OFFLINE=1 and an empty cache: the line names the download that fills it, the cache folder, and the
    way around it (a local folder, local files); exit code 2 (the user's to fix)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = "someone/t5-model" if step == "model" else REPO / "examples" / "tiny-t5"
    data = (
        ["--dataset_name", "financial_phrasebank"]
        if step == "dataset"
        else ["--train_file", REPO / "examples" / "quickstart.txt"]
    )
    code, err = run_cli(["--model_name_or_path", model, *data, *tiny_training_args(tmp_path / "out")], capsys)
    (line,) = err.strip().splitlines()
    cache = tmp_path / "hub-cache"
    fill = (
        "To run without the Hub, put the files in the Hugging Face cache first: run `hf download {}` on a machine "
        f"with network and copy its cache folder to {cache} here (HF_HOME sets where it is), then run again with "
        "HF_HUB_OFFLINE=1; or "
    )
    if step == "model":
        assert line.startswith("error: loading the model config of someone/t5-model failed: "), line
        assert line.endswith(fill.format("someone/t5-model") + "pass a local folder to --model_name_or_path."), line
    else:
        assert line.startswith("error: downloading the dataset financial_phrasebank failed: "), line
        assert line.endswith(
            fill.format("takala/financial_phrasebank --repo-type dataset")
            + "train from local files with --train_file (e.g. Sentences_AllAgree.txt)."
        ), line
    assert code == 2 and not (tmp_path / "out").exists()


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


@pytest.mark.parametrize(
    "mode",
    [pytest.param("hang", marks=pytest.mark.slow), "unresolvable", pytest.param("refuse", marks=pytest.mark.slow)],
)  # a silent Hub costs 2 waits per step; a refused connection is huggingface_hub's own fallback (seconds each)
def test_files_already_in_the_cache_still_load_when_the_hub_fails(mode, tmp_path, tiny_t5_dir):
    """Bounding the waits must not break huggingface_hub's fallback to the cache: a Hub that is silent, a host name
    that does not resolve and a refused connection all leave a run whose files are cached working, without
    HF_HUB_OFFLINE=1 (the errors that end a step early are taken for offline mode, not retried)."""
    argv = ["--model_name_or_path", "someone/tiny-t5", "--train_file", REPO / "examples" / "quickstart.txt",
            "--label_words", "negative,neutral,positive"]  # fmt: skip
    with FakeHub() as hub:
        for path in tiny_t5_dir.iterdir():
            hub.add_file("someone/tiny-t5", path.name, path.read_bytes())
        cli.main([str(arg) for arg in [*argv, *tiny_training_args(tmp_path / "online")]])
    url = "http://no-such-host.invalid" if mode == "unresolvable" else None
    with faulty_hub("hang" if mode == "unresolvable" else mode) as server, patch_hf_endpoint(url or server):
        trainer = cli.main([str(arg) for arg in [*argv, *tiny_training_args(tmp_path / "offline")]])
    assert trainer.state.global_step == 1 and (tmp_path / "offline" / "adapter_model.safetensors").is_file()


# --- the README's main job, offline: one line on stderr, and a bounded wait ---


def documented_main_command() -> list[str]:
    """The main job's command exactly as README.md writes it (Install, run, test)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    line = next(line for line in lines if line.endswith("# the main job"))
    return shlex.split(line.split("#", 1)[0])


@contextlib.contextmanager
def silent_hub():
    """A Hub that accepts every connection and never answers; yields (url, times of the connections it accepted)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted, held = [], []

    def accept():
        with contextlib.suppress(OSError):  # the server socket is closed at the end
            while True:
                held.append(server.accept()[0])  # kept open, never read, never answered
                accepted.append(time.monotonic())

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    finally:
        server.close()
        for connection in held:
            connection.close()


def run_documented(tmp_path, **env_vars) -> tuple[int, str, float, float]:
    """Run the main job with `env_vars`; return (exit code, stderr, the time its error line came, the time our process
    logged its per-process summary line: after its imports and parsing, before any request). On 2 shared cores the
    imports alone take 10-30 s (5-8 s idle) and the exit after the line 2-8 s, so the waits are timed from the summary
    line or the first request to the error line, not over the whole run."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "ACCELERATE_"))}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", HF_HOME=str(tmp_path / "hf-home"), **env_vars)
    command = [*documented_main_command(), "--output_dir", str(tmp_path / "out")]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started, stderr, failed = [], [], []

    def read_stdout():
        for line in process.stdout:
            if "Process rank:" in line and not started:
                started.append(time.monotonic())

    def read_stderr():
        for line in process.stderr:
            stderr.append(line)
            if line.startswith("error:") and not failed:
                failed.append(time.monotonic())

    readers = [threading.Thread(target=read_stdout), threading.Thread(target=read_stderr)]
    for reader in readers:
        reader.start()
    try:
        process.wait(timeout=300)
    finally:
        process.kill()
        for reader in readers:
            reader.join()
    assert started and failed, stderr
    assert not (tmp_path / "out").exists()  # nothing written
    return process.returncode, "".join(stderr), failed[0], started[0]


TO_GO_ON = (
    "To run without the Hub, put the files in the Hugging Face cache first: run `hf download t5-large` on a machine "
    "with network and copy its cache folder to {cache} here (HF_HOME sets where it is), then run again with "
    "HF_HUB_OFFLINE=1; or pass a local folder to --model_name_or_path."
)


@pytest.mark.slow  # one `accelerate launch` each: 15-40 s on 2 shared cores
@pytest.mark.parametrize(
    "fault, timeouts",
    # offline mode makes no request: the Hub timeouts do not apply to it, so it runs once
    [("unresolvable", None), ("unresolvable", 3), ("silent", None), ("silent", 3), ("offline", None)],
    ids=["unresolvable-default-timeouts", "unresolvable-3s-timeouts", "silent-default-timeouts", "silent-3s-timeouts",
         "offline"],
)  # fmt: skip
def test_the_documented_command_ends_in_one_line_after_a_bounded_wait(tmp_path, fault, timeouts):
    """`accelerate launch --quiet --config_file accelerate_configs/default.yaml run_prefix_tuning.py RECIPE` with no
    network: stderr is our one line (no accelerate warning, no traceback), exit code 1, and the wait for a host that
    does not resolve, a silent Hub (it accepts connections and never answers) or offline mode is bounded: within
    45 s at the default Hub timeouts (under 60 s in all with an idle machine's startup) and 12 s with 3-second ones
    (under 20 s). Each wait ends at the error line; the silent Hub's starts at its first connection, the others' at
    our process's summary line (the imports before it take 10-30 s on 2 loaded cores, the exit after the line 2-8 s:
    load, not waiting)."""
    env = {"HF_HUB_ETAG_TIMEOUT": str(timeouts), "HF_HUB_DOWNLOAD_TIMEOUT": str(timeouts)} if timeouts else {}
    cache = tmp_path / "hf-home" / "hub"
    with silent_hub() as (silent, connections):
        endpoint = {"unresolvable": "http://no-such-host.invalid", "silent": silent}.get(fault, "http://127.0.0.1:9")
        env.update(HF_ENDPOINT=endpoint, **({"HF_HUB_OFFLINE": "1"} if fault == "offline" else {}))
        code, stderr, error_line, summary_line = run_documented(tmp_path, **env)
    if fault == "silent":
        assert connections, "no request reached the silent Hub"
    wait = error_line - (connections[0] if fault == "silent" else summary_line)
    assert code == 1 and "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    step = "error: loading the model config of t5-large failed: "
    to_go_on = TO_GO_ON.format(cache=cache)
    if fault == "unresolvable":
        assert re.fullmatch(
            re.escape(f"{step}cannot connect to {endpoint} (the host name no-such-host.invalid does not resolve: ")
            + r"[^)]+"
            + re.escape(f"). {to_go_on}"),
            lines[0],
        ), lines[0]
    elif fault == "silent":
        seconds = 2 * (timeouts or 10)
        assert lines[0] == (
            f"{step}no answer from {endpoint} in time (network timeout): {seconds} s without an answer; "
            f"HF_HUB_ETAG_TIMEOUT={timeouts or 10} and HF_HUB_DOWNLOAD_TIMEOUT={timeouts or 10} (seconds) set how "
            f"long each request waits. {to_go_on}"
        )
    else:
        assert lines[0] == (
            f"{step}the files are not in the local cache and the Hub was not asked (offline mode). {to_go_on}"
        )
    assert wait < (45 if timeouts is None else 12), f"{fault}: {wait:.1f} s"
    assert fault == "silent" or wait < 12, f"{fault}: {wait:.1f} s"  # no network wait at all: local work only
