"""`prefix-tuning serve`'s arguments: flags and recipes parsed into ServeSettings by the training command's rules,
and every refusal one line with exit code 2, before anything is loaded or bound."""

from __future__ import annotations

import socket

import pytest

from prefix_tuning_utils import cli
from prefix_tuning_utils.arguments import ArgumentError
from prefix_tuning_utils.serving import ServeSettings, SettingsError
from prefix_tuning_utils.serving.cli import parse_serve_args
from prefix_tuning_utils.serving.server import bind
from tests.conftest import REPO


RECIPE = REPO / "recipes" / "serve_example.yaml"


def one_line_error(capsys, argv) -> str:
    """`prefix-tuning ARGV` in-process must stop with exit code 2 and one line on stderr (nothing loaded)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.cli([str(arg) for arg in argv])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch):
    monkeypatch.delenv("PREFIX_TUNING_API_KEY", raising=False)


def test_flags_become_settings():
    settings = parse_serve_args(
        ["--adapter", "acme=runs/acme", "--adapter", "globex=org/globex-prefix@v2", "--port", "9001",
         "--max_batch_size", "16", "--max_wait_ms", "2.5", "--predict_mode", "generate", "--bf16",
         "--max_inputs_per_request", "8", "--max_chars_per_input", "100", "--max_queued_rows", "64",
         "--access_log", "false", "--device", "cpu"]
    )  # fmt: skip
    assert settings == ServeSettings(
        adapters={"acme": "runs/acme", "globex": "org/globex-prefix@v2"},
        mode="generate",
        dtype="bfloat16",
        device="cpu",
        port=9001,
        max_batch_size=16,
        max_wait_ms=2.5,
        max_inputs_per_request=8,
        max_chars_per_input=100,
        max_queued_rows=64,
        access_log=False,
    )
    assert settings.host == "127.0.0.1" and settings.api_key is None  # safe by default: loopback, no key needed
    # Several adapters after one flag work too.
    assert parse_serve_args(["--adapter", "a=x", "b=y"]).adapters == {"a": "x", "b": "y"}


def test_the_shipped_recipe_parses_and_flags_override_it():
    settings = parse_serve_args([str(RECIPE)])
    assert settings.adapters == {"acme": "/tmp/acme", "globex": "/tmp/globex"}
    assert (settings.host, settings.port, settings.mode, settings.dtype) == ("127.0.0.1", 8000, "score", None)
    assert (settings.max_batch_size, settings.max_wait_ms, settings.max_queued_rows) == (64, 5, 1024)
    assert (settings.body_timeout_s, settings.graceful_timeout_s, settings.access_log) == (30, 30, True)
    # A flag wins over the recipe; --adapter replaces the recipe's adapters as a whole.
    settings = parse_serve_args([str(RECIPE), "--port", "9000", "--adapter", "initech=runs/initech"])
    assert settings.port == 9000 and settings.adapters == {"initech": "runs/initech"}


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("PREFIX_TUNING_API_KEY", "from-env")
    assert parse_serve_args(["--adapter", "a=x"]).api_key == "from-env"
    assert parse_serve_args(["--adapter", "a=x", "--api_key", "from-flag"]).api_key == "from-flag"
    assert "from-env" not in repr(parse_serve_args(["--adapter", "a=x"]))  # never logged
    monkeypatch.setenv("PREFIX_TUNING_API_KEY", " ")
    with pytest.raises(ArgumentError, match="^PREFIX_TUNING_API_KEY is set but empty: set it to a key, or unset it.$"):
        parse_serve_args(["--adapter", "a=x"])


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "Nothing to serve: give at least one --adapter NAME=SOURCE"),
        (["--adapter", "runs/acme"], "--adapter 'runs/acme': expected NAME=SOURCE, e.g. acme=runs/acme"),
        (["--adapter", "acme="], "--adapter 'acme=': expected NAME=SOURCE"),
        (["--adapter", "a=x", "--adapter", "a=y"], "--adapter a is given twice (x and y): names must differ."),
        (["--adapter", "a/b=x"], "--adapter name 'a/b' is not usable: a name is 1 to 64 letters, digits"),
        (["--adapter", "a=x", "--port", "70000"], "--port must be between 0 and 65535 (0: any free port), got 70000."),
        (["--adapter", "a=x", "--max_batch_size", "0"], "--max_batch_size must be a positive integer, got 0."),
        (["--adapter", "a=x", "--max_wait_ms", "-1"], "--max_wait_ms must be a number of at least 0, got -1.0."),
        (["--adapter", "a=x", "--max_queued_rows", "10"], "--max_queued_rows (10) must be at least "
         "--max_inputs_per_request (128)"),
        (["--adapter", "a=x", "--api_key", ""], "--api_key is empty: give a key, or none at all"),
        (["--adapter", "a=x", "--device", "gpu"], "--device 'gpu' is not a device: use cpu, cuda, cuda:1, mps."),
        (["--adapter", "a=x", "--max_batch", "8"], "unknown flag --max_batch; did you mean --max_batch_size?"),
        (["--adapter", "a=x", "--predict_mode", "rank"], "argument --predict_mode/--predict-mode: invalid choice: 'rank'"),
        (["--adapter", "a=x", "--port", "http"], "argument --port: invalid int value: 'http'"),
    ],
)  # fmt: skip
def test_bad_arguments_are_one_line_exit_2(capsys, argv, expected):
    err = one_line_error(capsys, ["serve", *argv])
    assert err.startswith(f"error: {expected}"), err


def test_bad_recipes_are_one_line_exit_2(capsys, tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("adapter:\n  acme: runs/acme\nmax_batch: 8\n")
    err = one_line_error(capsys, ["serve", typo])
    assert err == (
        f"error: Recipe {typo} has unknown key(s): max_batch. Did you mean max_batch_size? See `prefix-tuning serve --help`."
    )
    bad_name = tmp_path / "bad_name.yaml"
    bad_name.write_text("adapter:\n  'a b': runs/acme\n")
    assert one_line_error(capsys, ["serve", bad_name]).startswith("error: --adapter name 'a b' is not usable")
    no_source = tmp_path / "no_source.yaml"
    no_source.write_text("adapter:\n  acme:\n")
    assert one_line_error(capsys, ["serve", no_source]) == (
        "error: --adapter acme has no source: give acme=FOLDER or acme=HUB_ID[@REVISION]."
    )
    assert one_line_error(capsys, ["serve", tmp_path / "missing.yaml"]).startswith("error: Recipe ")


def test_serve_help_lists_its_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.cli(["serve", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: prefix-tuning serve ")
    for flag in ("--adapter", "--host", "--port", "--api_key", "--max_batch_size", "--max_wait_ms", "--predict_mode",
                 "--bf16", "--max_inputs_per_request", "--max_chars_per_input", "--device"):  # fmt: skip
        assert flag in text
    assert "PREFIX_TUNING_API_KEY" in text


def test_a_port_in_use_is_one_line_before_anything_loads():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ArgumentError, match=rf"^Cannot listen on 127.0.0.1:{port}: Address already in use\. "):
            bind(ServeSettings(port=port))
    finally:
        taken.close()
    free = bind(ServeSettings(port=0))  # 0: any free port
    try:
        assert free.getsockname()[1] > 0
    finally:
        free.close()


def test_without_the_serve_extra_the_command_says_what_to_install(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "uvicorn" else real(name, *args)
    )
    assert one_line_error(capsys, ["serve", "--adapter", "a=x"]) == (
        "error: `prefix-tuning serve` needs uvicorn: pip install -e '.[serve]' (from the repository), or pip install "
        "'prefix-tuning[serve]'."
    )


@pytest.mark.parametrize(
    "settings, setting, problem",
    [
        (dict(adapters={"acme": " "}), "adapter", "'acme' has no source: give NAME=FOLDER or NAME=HUB_ID[@REVISION]."),
        (dict(mode="rank"), "predict_mode", "must be score or generate, got 'rank'."),
        (dict(dtype="int8"), "dtype", "must be one of float32, bfloat16, float16, got 'int8'."),
        (dict(max_wait_ms=True), "max_wait_ms", "must be a number of at least 0, got True."),
        (dict(body_timeout_s=0), "body_timeout_s", "must be more than 0 seconds."),
        (dict(log_level="verbose"), "log_level", "must be one of debug, info, warning, error, got 'verbose'."),
        (dict(host=""), "host", "is empty: give an address to listen on, e.g. 127.0.0.1 or 0.0.0.0."),
    ],
)
def test_settings_built_in_python_are_checked_too(settings, setting, problem):
    """The library's own settings refuse what the command line's flags would (SettingsError names the setting)."""
    with pytest.raises(SettingsError) as refused:
        ServeSettings(**settings)
    assert (refused.value.setting, refused.value.problem) == (setting, problem)
    assert str(refused.value) == f"{setting} {problem}"
