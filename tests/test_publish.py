"""Publishing: `--push_to_hub`, `prefix-tuning push` and its old spelling `--push_only` against the fake Hub (tests/fake_hub.py), the model card, and no
token in any byte written, uploaded or logged."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import secrets
import shlex
from types import SimpleNamespace

import pytest
import torch
import yaml
from huggingface_hub import HfApi
from peft import PeftConfig, PeftModel
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from prefix_tuning_utils import hub as hub_module
from prefix_tuning_utils.arguments import ArgumentError, parse_args
from tests.conftest import REPO
from tests.fake_hub import FakeHub, patch_hf_endpoint
from tests.faulty_hub import faulty_hub
from tests.helpers import run_cli, run_main, run_script


BASE_REPO = "fake-user/tiny-t5"
ADAPTER_REPO = "fake-user/tiny-prefix"
DATA = REPO / "examples" / "quickstart.txt"
SENTENCES = [
    "Acme Corp said its net sales rose 12 percent from a year earlier .",
    "Fjord Telecom has 3 offices .",
    "Operating profit fell sharply and the company cut jobs .",
]


def training_argv(out, hub_model_id=None, *extra):
    argv = [
        "--model_name_or_path", BASE_REPO,
        "--train_file", DATA,
        "--label_words", "negative,neutral,positive",
        "--output_dir", out,
        "--do_train", "--do_eval", "--predict_with_generate",
        "--max_steps", "6",
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "32",
        "--learning_rate", "0.05",
        "--logging_steps", "1",
        "--report_to", "none",
        "--seed", "0",
    ]  # fmt: skip
    if hub_model_id is not None:
        argv += ["--push_to_hub", "--hub_model_id", hub_model_id]
    return [str(a) for a in argv + list(extra)]


def front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, re.S)


def generate(model, tokenizer, sentences):
    batch = tokenizer(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        output = model.eval().generate(**batch, max_new_tokens=5)
    return tokenizer.batch_decode(output, skip_special_tokens=True)


def local_predictions(base_dir, adapter_dir, sentences=SENTENCES):
    """The local adapter, on the base model's own files (no Hub involved)."""
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base_dir), adapter_dir)
    return generate(model, AutoTokenizer.from_pretrained(adapter_dir), sentences)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def retry_argv(error_line: str, token: str | None) -> list[str]:
    """The retry command printed in the error line (`prefix-tuning push ...`), as argv of run_main()."""
    command = error_line.split("retry the push alone with: ", 1)[1]
    argv = shlex.split(command.replace("<your token>", token or ""))
    assert argv[:2] == ["prefix-tuning", "push"], argv
    return argv[1:]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fake(tmp_path_factory, tiny_t5_dir):
    """A fake Hub serving the tiny T5 (with weights) as `fake-user/tiny-t5`, the base model of every run here."""
    tmp = tmp_path_factory.mktemp("fake-hub")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(tmp / "hf_home"))
        with FakeHub(hub_cache=tmp / "hub_cache") as hub:
            api = HfApi(token="hf_test_uploader")
            api.create_repo(BASE_REPO)
            api.upload_folder(repo_id=BASE_REPO, folder_path=tiny_t5_dir)
            hub.uploads.clear()  # what the tests check is what the runs upload
            hub.requests.clear()
            yield hub


@pytest.fixture(scope="module")
def published(fake, tmp_path_factory):
    """One training run in a subprocess with --push_to_hub, a Hub token and a model token (both random), saving and
    pushing checkpoints on the way (`--hub_strategy checkpoint`). Its whole output is kept, to grep it."""
    tmp = tmp_path_factory.mktemp("published")
    hub_token, model_token = f"hf_test_{secrets.token_hex(16)}", f"hf_test_{secrets.token_hex(16)}"
    out = tmp / "run"
    argv = training_argv(out, ADAPTER_REPO, "--hub_token", hub_token, f"--token={model_token}")
    argv += ["--eval_strategy", "steps", "--eval_steps", "3", "--save_strategy", "steps", "--save_steps", "3"]
    argv += ["--hub_strategy", "checkpoint", "--log_level", "debug"]  # every log line there is, the arguments too
    proc = run_script(*argv, offline=False)  # the fake Hub serves the base model
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return SimpleNamespace(out=out, proc=proc, hub_token=hub_token, model_token=model_token, tmp=tmp)


@pytest.mark.slow  # `published` trains and pushes in a subprocess first (about 10 s)
def test_push_to_hub_publishes_an_adapter_that_loads_with_the_plain_snippet(fake, published, tiny_t5_dir):
    files = fake.files(ADAPTER_REPO)
    out = published.out
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert files[name] == (out / name).read_bytes(), name
    for name in ("README.md", "confusion_matrix.png", "loss_curve.png", "all_results.json", "eval_results.json"):
        assert files[name] == (out / name).read_bytes(), name
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == BASE_REPO

    # The plain usage snippet, through the same server: same answers as the local adapter on the local base.
    config = PeftConfig.from_pretrained(ADAPTER_REPO)
    model = AutoModelForSeq2SeqLM.from_pretrained(config.base_model_name_or_path)
    model = PeftModel.from_pretrained(model, ADAPTER_REPO)
    from_hub = generate(model, AutoTokenizer.from_pretrained(ADAPTER_REPO), SENTENCES)
    assert from_hub == local_predictions(tiny_t5_dir, out)
    # ... and the prefix matters: the base model alone answers differently on some input.
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir)
    assert generate(base, AutoTokenizer.from_pretrained(tiny_t5_dir), SENTENCES) != from_hub


@pytest.mark.slow  # `published` trains and pushes in a subprocess first (about 10 s)
def test_card_snippets_run_as_written_against_the_hub(fake, published, tmp_path, monkeypatch):
    card = fake.files(ADAPTER_REPO)["README.md"].decode()
    usage, scoring = python_blocks(card)
    assert f'adapter = "{ADAPTER_REPO}"' in usage and "import prefix_tuning_utils" in usage
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(usage, "model card: usage", "exec"), {})
    printed = stdout.getvalue().strip()
    # The snippet prints what the trained model answered when the run ended (written as a comment in the card).
    expected = re.search(r"skip_special_tokens=True\)\)  # (.*)\n", usage).group(1)
    assert printed == expected, (printed, expected)

    (tmp_path / "sentences.txt").write_text("".join(f"{s}@neutral\n" for s in SENTENCES), encoding="iso-8859-1")
    monkeypatch.chdir(tmp_path)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(scoring, "model card: scoring", "exec"), {})
    metrics = ast.literal_eval(stdout.getvalue().strip())
    assert metrics["samples"] == len(SENTENCES) and 0.0 <= metrics["accuracy"] <= 1.0


@pytest.mark.slow  # `published` trains and pushes in a subprocess first (about 10 s)
def test_no_token_in_any_uploaded_byte_written_file_or_log_line(fake, published):
    tokens = [published.hub_token.encode(), published.model_token.encode()]
    # The Hub token was really used (in the Authorization header of the commits, where it belongs) ...
    commits = [r for r in fake.requests if "/commit/" in r.path]
    assert len(commits) >= 3  # two checkpoints (hub_strategy checkpoint) and the final push
    assert all(r.headers["Authorization"] == f"Bearer {published.hub_token}" for r in commits)
    # ... and never in a body: every uploaded file (decoded) and every raw request body.
    uploaded = fake.all_uploaded_bytes()
    assert uploaded and not any(token in uploaded for token in tokens)
    assert not [u.path for u in fake.uploads if u.path.endswith(".bin")]  # training_args.bin is never uploaded
    assert {"last-checkpoint/optimizer.pt", "last-checkpoint/trainer_state.json"} <= set(fake.files(ADAPTER_REPO))

    # Every file the run wrote, checkpoints and the pickled training arguments included.
    written = [p for p in published.out.rglob("*") if p.is_file()]
    pickles = [p for p in written if p.name == "training_args.bin"]
    assert len(pickles) >= 2 and all(b"hub_token" in p.read_bytes() for p in pickles)  # really the args pickle
    leaks = [str(p) for p in written for token in tokens if token in p.read_bytes()]
    assert leaks == []

    # Every log line (at --log_level debug the run logs its arguments) and the command recorded in the card.
    logs = published.proc.stdout + published.proc.stderr
    assert b"PrefixTrainingArguments(" in logs and b"ModelArguments(" in logs
    assert not any(token in logs for token in tokens)
    card = (published.out / "README.md").read_text()
    assert "--hub_token '<redacted>'" in card or "--hub_token <redacted>" in card
    assert "--token=<redacted>" in card


@pytest.mark.slow  # `published` trains and pushes in a subprocess first (about 10 s)
def test_model_card_front_matter_has_the_run_s_eval_accuracy(fake, published):
    card = fake.files(ADAPTER_REPO)["README.md"].decode()
    meta = front_matter(card)
    results = json.loads((published.out / "all_results.json").read_text())
    assert meta["library_name"] == "peft" and meta["base_model"] == BASE_REPO
    assert "prefix-tuning" in meta["tags"] and f"base_model:adapter:{BASE_REPO}" in meta["tags"]
    (index,) = meta["model-index"]
    assert index["name"] == ADAPTER_REPO
    metrics = {m["type"]: m["value"] for m in index["results"][0]["metrics"]}
    assert metrics["accuracy"] == results["eval_accuracy"]
    assert metrics["f1"] == results["eval_macro_f1"]
    assert index["results"][0]["dataset"]["split"] == "validation"
    # The body: what was trained, the data, the results table and plots, the command to reproduce.
    adapter = json.loads((published.out / "adapter_config.json").read_text())
    prefix_values = adapter["num_virtual_tokens"] * adapter["num_layers"] * 2 * adapter["token_dim"]
    for text in (
        f"| trainable parameters | {prefix_values:,} of",
        f"| adapter file | `adapter_model.safetensors`: {prefix_values:,} float32 values",
        "| train | 145 |",
        "| validation | 17 |",
        "held out stratified by label with seed 42",
        "| label | precision | recall | F1 | support |",
        "![Confusion matrix on the validation split](confusion_matrix.png)",
        "![Training and validation loss](loss_curve.png)",
        "| learning_rate | 0.05 |",
        "python run_prefix_tuning.py --model_name_or_path fake-user/tiny-t5",
        "- transformers ",
    ):
        assert text in card, text
    assert f"{results['eval_accuracy']:.4f}" in card
    assert "Seq2SeqTrainingArguments" not in card and str(published.tmp) not in card.split("## Training")[0]


@pytest.mark.slow  # trains, then pushes twice to a fake Hub: 2.5 s a case
@pytest.mark.parametrize("status", [500, 403])
def test_refused_commit_exits_with_one_line_and_push_only_publishes_later(
    fake, tmp_path, monkeypatch, capsys, tiny_t5_dir, status
):
    repo, token = f"fake-user/refused-{status}", f"hf_test_{secrets.token_hex(8)}"
    out = tmp_path / "run"
    fake.fail_commit = status
    try:
        code, stderr = run_cli(training_argv(out, repo, "--hub_token", token), capsys)
    finally:
        fake.fail_commit = None
    (line,) = error_lines(stderr)
    assert code == 1 and "Traceback" not in stderr
    assert f"committing the files to {repo}: HTTP {status}" in line and token not in stderr
    assert f"retry the push alone with: prefix-tuning push --output_dir {out}" in line
    # Nothing published; everything saved locally, the model card included.
    assert "adapter_model.safetensors" not in fake.files(repo)
    local = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "all_results.json",
        "README.md",
        "loss_curve.png",
    ):
        assert name in local, name
    assert "eval_accuracy" in json.loads(local["all_results.json"])

    # The printed command publishes the run as it is.
    assert run_main(retry_argv(line, token)).startswith(fake.url)
    files = fake.files(repo)
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "eval_results.json"):
        assert files[name] == local[name], name
    assert front_matter(files["README.md"].decode())["model-index"][0]["name"] == repo
    assert local_predictions(tiny_t5_dir, out) == generate(
        PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(BASE_REPO), repo),
        AutoTokenizer.from_pretrained(repo),
        SENTENCES,
    )


@pytest.mark.slow  # `published` trains and pushes in a subprocess first (about 10 s)
def test_push_only_reports_network_down_and_refused_token_in_one_line(fake, published, monkeypatch, capsys):
    with FakeHub() as down:
        down.stop()  # the endpoint now points at a closed port
        code, stderr = run_cli(["--push_only", "--output_dir", published.out, "--hub_model_id", "fake-user/x"], capsys)
    (line,) = error_lines(stderr)
    assert code == 1 and "Traceback" not in stderr
    assert "creating the repo fake-user/x: cannot reach the Hub at http://127.0.0.1:" in line
    assert line.endswith(f"prefix-tuning push --output_dir {published.out} --hub_model_id fake-user/x")

    fake.fail_create_repo = 401
    try:
        code, stderr = run_cli(
            ["--push_only", "--output_dir", published.out, "--hub_model_id", "y", "--hub_token", "hf_test_bad"], capsys
        )
    finally:
        fake.fail_create_repo = None
    (line,) = error_lines(stderr)
    assert code == 1 and "HTTP 401" in line and "--hub_token" in line and "hf_test_bad" not in stderr
    assert line.endswith("--hub_model_id y --hub_token <your token>")


@pytest.mark.slow  # `published` trains and pushes in a subprocess first (about 10 s)
@pytest.mark.parametrize("mode", ["hang", 500, 403])
def test_push_only_to_a_silent_or_failing_hub_is_one_line(fake, published, mode, monkeypatch, capsys):
    """A Hub that accepts the connection and never answers (bounded wait), or answers an HTTP error."""
    from prefix_tuning_utils import network

    monkeypatch.setattr(network, "CONNECT_TIMEOUT", 0.5)
    monkeypatch.setattr(network, "READ_TIMEOUT", 0.5)
    with faulty_hub(mode) as url, patch_hf_endpoint(url):
        code, stderr = run_cli(["--push_only", "--output_dir", published.out, "--hub_model_id", "fake-user/x"], capsys)
    (line,) = error_lines(stderr)
    assert code == 1 and "Traceback" not in stderr
    expected = {"hang": "cannot reach the Hub at http://127.0.0.1:", 500: "HTTP 500", 403: "HTTP 403"}[mode]
    assert "creating the repo fake-user/x: " + expected in line, line
    assert line.endswith(f"prefix-tuning push --output_dir {published.out} --hub_model_id fake-user/x")


@pytest.mark.slow  # `published` trains and pushes in a subprocess first (about 10 s)
def test_push_only_to_a_branch(fake, published):
    repo = "fake-user/branched"
    run_main(["--push_only", "--output_dir", published.out, "--hub_model_id", repo, "--hub_revision", "dev"])
    assert "adapter_model.safetensors" in fake.files(repo, revision="dev")
    assert "adapter_model.safetensors" not in fake.files(repo)
    card = fake.files(repo, revision="dev")["README.md"].decode()
    usage = python_blocks(card)[0]
    assert 'PeftModel.from_pretrained(model, adapter, revision="dev")' in usage
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(usage, "model card: usage", "exec"), {})


@pytest.mark.slow  # `published` trains and pushes in a subprocess first (about 10 s)
def test_push_subcommand_publishes_a_finished_run(fake, published, capsys):
    """`prefix-tuning push` (also `python run_prefix_tuning.py push`), in-process through cli(): the run's files,
    byte for byte, and a card rendered for the repo pushed to."""
    repo = "fake-user/pushed"
    code, stderr = run_cli(["push", "--output_dir", published.out, "--hub_model_id", repo], capsys)
    assert code == 0 and stderr.count("error:") == 0, stderr
    files = fake.files(repo)
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "all_results.json"):
        assert files[name] == (published.out / name).read_bytes(), name
    assert front_matter(files["README.md"].decode())["model-index"][0]["name"] == repo
    assert not any(name.startswith("checkpoint-") or name.endswith(".bin") for name in files)


@pytest.mark.slow  # `published` trains and pushes in a subprocess first (about 10 s)
def test_push_only_is_the_old_spelling_of_push(fake, published, caplog):
    """`--push_only` anywhere (with or without a value) still publishes, with a warning that names the new command."""
    repo = "fake-user/old-spelling"
    with caplog.at_level("WARNING", logger="prefix_tuning_utils.cli"):
        url = run_main(["--output_dir", published.out, "--push_only", "true", "--hub_model_id", repo])
    assert url.startswith(fake.url) and "adapter_model.safetensors" in fake.files(repo)
    assert "--push_only is deprecated: use `prefix-tuning push ...` instead." in caplog.text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--push_to_hub", "--hub_model_id", "a/b/c"], "--hub_model_id 'a/b/c' is not a valid Hub repo id"),
        (["--push_to_hub", "--hub_model_id", "bad name!"], "--hub_model_id 'bad name!' is not a valid Hub repo id"),
        (["--push_to_hub", "--hub_model_id", "me/x", "--model_name_or_path", "LOCAL"], "is the local folder"),
    ],
)
def test_push_to_hub_is_checked_before_any_work(tmp_path, tiny_t5_dir, extra, message):
    out = tmp_path / "run"
    argv = training_argv(out) + [str(tiny_t5_dir) if a == "LOCAL" else a for a in extra]
    with pytest.raises(ArgumentError, match=re.escape(message)):
        run_main(argv)
    assert not out.exists()


def test_push_to_hub_needs_training(tmp_path):
    argv = [a for a in training_argv(tmp_path / "run", "me/x") if a != "--do_train"]
    with pytest.raises(ArgumentError, match="--push_to_hub publishes the adapter a training run writes"):
        run_main(argv)


@pytest.mark.parametrize("command", ["push", "--push_only"])
def test_push_only_refuses_what_it_cannot_publish(tmp_path, command):
    with pytest.raises(ArgumentError, match="holds no adapter"):
        run_main([command, "--output_dir", tmp_path, "--hub_model_id", "me/x"])
    with pytest.raises(ArgumentError, match="takes only --output_dir.*got --learning_rate 0.1"):
        run_main([command, "--output_dir", tmp_path, "--learning_rate", "0.1"])
    # A misspelt or shortened hub flag is named with the one meant (no abbreviations: `--hub_model` is refused).
    for typo in ("--hub_modle_id", "--hub_model"):
        with pytest.raises(ArgumentError, match=f"unknown flag {typo}; did you mean --hub_model_id"):
            run_main([command, "--output_dir", tmp_path, typo, "me/x"])


def test_local_run_writes_the_card_without_pushing(tmp_path, tiny_t5_dir):
    """No Hub at all: the card, its plot and the run record are written next to the adapter (no eval here)."""
    out = tmp_path / "run"
    argv = training_argv(out) + ["--model_name_or_path", tiny_t5_dir, "--max_steps", "2"]
    run_main([a for a in argv if a not in ("--do_eval", "--predict_with_generate")])
    card = (out / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "peft" and "base_model" not in meta and "model-index" not in meta
    assert "Not evaluated" in card and "(a local folder)" in card and "More Information Needed" not in card
    assert (out / "loss_curve.png").is_file() and not (out / "confusion_matrix.png").exists()
    assert f'adapter = "{out}"' in card
    assert json.loads((out / "run_record.json").read_text())["evaluation"] is None


def test_logged_arguments_hold_no_token(tmp_path):
    model_args, data_args, prefix_args, _, training_args = parse_args(
        training_argv(tmp_path, "me/x", "--hub_token", "hf_test_hub_secret", "--token", "hf_test_model_secret")
    )
    settings = hub_module.take_hub_settings(training_args, model_args)
    logged = f"Model {model_args}\nData {data_args}\nPrefix {prefix_args}\nTraining {training_args} {settings}"
    assert "hf_test_hub_secret" not in logged and "hf_test_model_secret" not in logged
    assert settings.token == "hf_test_hub_secret" and training_args.hub_token is None
    assert not training_args.push_to_hub  # the Trainer itself never pushes the output folder


def test_help_documents_push_only(capsys):
    with pytest.raises(SystemExit) as exit:
        parse_args(["--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--push_only --output_dir DIR" in text
    assert "prefix-tuning push --output_dir DIR [--hub_model_id ID] [--hub_token TOKEN]" in text


def test_package_never_unpickles():
    """No `pickle` and no `torch.load` without `weights_only=True` in the package or the entry script."""
    sources = sorted((REPO / "prefix_tuning_utils").glob("*.py")) + [REPO / "run_prefix_tuning.py"]
    offences = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names):
                    offences.append(f"{path.name}:{node.lineno} imports pickle")
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "load"):
                safe = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords
                )
                if not safe:
                    offences.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    assert offences == []


@pytest.mark.parametrize("command", ["training", "push", "push_only"])
def test_misspelt_hub_key_in_a_recipe_is_refused(tmp_path, command):
    recipe = tmp_path / "recipe.yaml"
    settings = {"output_dir": str(tmp_path / "run"), "hub_model_idd": "me/x", "hub_strategy": "end"}
    recipe.write_text(yaml.safe_dump(settings | ({"do_train": True} if command == "training" else {})))
    argv = {"training": [str(recipe)], "push": ["push", str(recipe)], "push_only": [str(recipe), "--push_only"]}
    message = f"Recipe {recipe} has unknown key(s): hub_model_idd. Did you mean hub_model_id?"
    with pytest.raises(ArgumentError, match=re.escape(message)):
        run_main(argv[command])
    # Spelt right, the hub keys of a training recipe (even those `push` does not use) are accepted.
    settings["hub_model_id"] = settings.pop("hub_model_idd")
    recipe.write_text(yaml.safe_dump(settings))
    with pytest.raises(ArgumentError, match="holds no adapter"):
        run_main(["push", str(recipe)] if command == "push" else [str(recipe), "--push_only"])


@pytest.mark.slow  # `published` trains and pushes in a subprocess first (about 10 s)
def test_no_file_holding_the_token_is_uploaded_final_or_checkpoint(fake, published, tmp_path, caplog):
    """The secret check runs before every upload: the final push refuses with one line, a checkpoint push warns;
    nothing reaches the Hub in either case."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(published.out, out)
    token = f"hf_test_{secrets.token_hex(8)}"
    repo = "fake-user/leaky"
    settings = hub_module.HubSettings(push_to_hub=True, model_id=repo, token=token, output_dir=str(out))
    config = out / "tokenizer_config.json"
    config.write_text(config.read_text().replace("{", f'{{"leaked": "{token}", ', 1))
    with pytest.raises(hub_module.PushError, match=r"refusing to upload .*tokenizer_config.json: it contains the Hub"):
        hub_module.push_run(settings)

    settings.strategy = "checkpoint"
    checkpoint = next(out.glob("checkpoint-*"))
    state = checkpoint / "trainer_state.json"
    state.write_text(state.read_text().replace("{", f'{{"leaked": "{token}", ', 1))
    step = int(checkpoint.name.split("-")[1])
    callback = hub_module.HubCheckpointCallback(settings)
    with caplog.at_level("WARNING", logger="prefix_tuning_utils.hub"):
        callback.on_save(SimpleNamespace(output_dir=str(out)), SimpleNamespace(is_world_process_zero=True,
                         global_step=step), None)  # fmt: skip
    assert "trainer_state.json: it contains the Hub token" in caplog.text
    assert fake.files(repo) == {} and token.encode() not in fake.all_uploaded_bytes()

    # Without the token, the same checkpoint push goes through: the adapter at the root, the state in last-checkpoint.
    state.write_text(state.read_text().replace(f'"leaked": "{token}", ', "", 1))
    callback.on_save(SimpleNamespace(output_dir=str(out)), SimpleNamespace(is_world_process_zero=True,
                     global_step=step), None)  # fmt: skip
    assert {"adapter_model.safetensors", "last-checkpoint/trainer_state.json"} <= set(fake.files(repo))
    assert not any(name.endswith(".bin") for name in fake.files(repo))


# --- the secret check, on every kind of file that is uploaded -------------------------------------------------------

# What a finished run publishes, by kind, written out by hand (hub.py's allow-list must pick exactly these).
PUBLISHED = {
    "adapter": ["adapter_model.safetensors", "adapter_config.json", "all_layer_prefix.safetensors", "prefix_tuning.json"],
    "tokenizer": [
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "spiece.model",
        "sentencepiece.bpe.model", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja",
    ],
    "results": ["all_results.json", "train_results.json", "eval_results.json", "predict_results.json"],
    "card": ["README.md", "confusion_matrix.png", "loss_curve.png"],
}  # fmt: skip
PUBLISHED_FILES = sorted(name for names in PUBLISHED.values() for name in names)
# Files of a run folder that are never published.
NOT_PUBLISHED = ["training_args.bin", "run_record.json", "trainer_state.json", "optimizer.pt", "notes.txt",
                 "predictions.jsonl", "predictions.state.json", "prefix_encoder.safetensors"]  # fmt: skip
# A checkpoint's resumable state, pushed with --hub_strategy checkpoint / all_checkpoints.
CHECKPOINT_STATE = [
    "trainer_state.json",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state.pth",
    "rng_state_1.pth",
]


def fill_folder(folder, names, token: str | None = None, leaky: str | None = None):
    """Write `names` into `folder` (binary-looking content for weights and PNGs); `leaky` gets `token` inside."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        content = b"\x89PNG\r\n\x1a\n\x00\x01" if name.endswith(".png") else f'{{"name": "{name}"}}\n'.encode()
        if name == leaky:
            content += b"\x00" + token.encode() + b"\x00"
        (folder / name).write_bytes(content)


def test_the_allow_list_publishes_every_kind_and_nothing_else(tmp_path):
    fill_folder(tmp_path, PUBLISHED_FILES + NOT_PUBLISHED)
    (tmp_path / "checkpoint-2").mkdir()
    fill_folder(tmp_path / "checkpoint-2", ["adapter_model.safetensors"])
    (tmp_path / "base_model").mkdir()
    assert hub_module.files_to_publish(tmp_path) == PUBLISHED_FILES


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with FakeHub(hub_cache=tmp_path / "hub_cache") as hub:
        yield hub


def assert_nothing_pushed(hub, token: str) -> None:
    assert [r.path for r in hub.requests if "/commit/" in r.path or "/preupload/" in r.path] == []
    assert hub.uploads == [] and token.encode() not in hub.all_uploaded_bytes()


@pytest.mark.parametrize("leaky", PUBLISHED_FILES)
def test_a_token_in_any_published_file_stops_the_push_with_nothing_uploaded(tmp_path, empty_hub, leaky):
    token = f"hf_test_{secrets.token_hex(12)}"
    run = tmp_path / "run"
    fill_folder(run, PUBLISHED_FILES + NOT_PUBLISHED, token, leaky)
    settings = hub_module.HubSettings(push_to_hub=True, model_id="fake-user/leaky", token=token, output_dir=str(run))
    names = tuple(hub_module.files_to_publish(run))
    with pytest.raises(hub_module.PushError) as error:
        hub_module.upload(settings, [(str(run), "", names)], "final push")
    assert str(error.value) == f"refusing to upload {run / leaky}: it contains the Hub token. Nothing was pushed."
    assert_nothing_pushed(empty_hub, token)
    # The same folder without the token goes through, every file in one commit (the check is no blanket refusal).
    fill_folder(run, [leaky])
    count, _ = hub_module.upload(settings, [(str(run), "", names)], "final push")
    assert count == len(PUBLISHED_FILES) and sorted(empty_hub.files("fake-user/leaky")) == PUBLISHED_FILES


@pytest.mark.parametrize("strategy", ["checkpoint", "all_checkpoints"])
@pytest.mark.parametrize("leaky", ["adapter_model.safetensors", "tokenizer.json", *CHECKPOINT_STATE])
def test_a_token_in_any_checkpoint_file_stops_that_push(tmp_path, empty_hub, caplog, strategy, leaky):
    token = f"hf_test_{secrets.token_hex(12)}"
    checkpoint = tmp_path / "run" / "checkpoint-4"
    fill_folder(checkpoint, ["adapter_model.safetensors", "adapter_config.json", "tokenizer.json",
                             "training_args.bin", *CHECKPOINT_STATE], token, leaky)  # fmt: skip
    settings = hub_module.HubSettings(
        push_to_hub=True, model_id="fake-user/ckpt", token=token, strategy=strategy, output_dir=str(tmp_path / "run")
    )
    callback = hub_module.HubCheckpointCallback(settings)
    state = SimpleNamespace(is_world_process_zero=True, global_step=4)
    with caplog.at_level("WARNING", logger="prefix_tuning_utils.hub"):
        callback.on_save(SimpleNamespace(output_dir=str(tmp_path / "run")), state, None)
    assert f"refusing to upload {checkpoint / leaky}: it contains the Hub token" in caplog.text
    assert_nothing_pushed(empty_hub, token)
    # Without the token: the adapter at the repo's root, the resumable state in its folder, never the pickle.
    fill_folder(checkpoint, [leaky])
    callback.on_save(SimpleNamespace(output_dir=str(tmp_path / "run")), state, None)
    folder = {"checkpoint": "last-checkpoint", "all_checkpoints": "checkpoint-4"}[strategy]
    adapter = ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json"]
    assert sorted(empty_hub.files("fake-user/ckpt")) == sorted(
        adapter + [f"{folder}/{name}" for name in adapter + CHECKPOINT_STATE]
    )


@pytest.mark.parametrize(
    "base, extra, kind",
    [
        ("fake-user/tiny-llama", [], "causal model with --tuning_method prefix"),
        ("fake-user/tiny-llama", ["--tuning_method", "lora"], "causal model with --tuning_method lora"),
        (BASE_REPO, ["--tuning_method", "full"], "seq2seq model with --tuning_method full"),
    ],
)
def test_push_to_hub_of_a_model_the_push_cannot_carry_is_refused_up_front(
    fake, tiny_llama_dir, tmp_path, monkeypatch, capsys, base, extra, kind
):
    """Decoder-only models and full fine-tuning: one line, exit code 2, nothing written, nothing pushed."""
    if not fake.repo_exists("fake-user/tiny-llama"):
        HfApi(token="hf_test_uploader").create_repo("fake-user/tiny-llama")
        HfApi(token="hf_test_uploader").upload_folder(repo_id="fake-user/tiny-llama", folder_path=tiny_llama_dir)
    requests_before = len(fake.requests)
    out = tmp_path / "run"
    argv = training_argv(out, "fake-user/not-carried", "--model_name_or_path", base, *extra)
    code, stderr = run_cli(argv, capsys)
    (line,) = error_lines(stderr)
    assert code == 2 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert line == (
        "error: --push_to_hub publishes seq2seq adapters (the model card and its snippets are written for them); "
        f"this run is a {kind}. Drop --push_to_hub."
    )
    assert not out.exists()
    assert not fake.repo_exists("fake-user/not-carried")
    assert [r for r in fake.requests[requests_before:] if r.method != "GET" and r.method != "HEAD"] == []


def test_without_hub_token_the_login_token_is_checked_too(tmp_path, empty_hub, monkeypatch):
    """No --hub_token: the push uses the token of `hf auth login` (HF_TOKEN here), which no file may hold either."""
    token = f"hf_test_{secrets.token_hex(12)}"
    monkeypatch.setenv("HF_TOKEN", token)
    run = tmp_path / "run"
    fill_folder(run, PUBLISHED_FILES, token, "eval_results.json")
    settings = hub_module.HubSettings(push_to_hub=True, model_id="fake-user/leaky", token=None, output_dir=str(run))
    with pytest.raises(hub_module.PushError, match="eval_results.json: it contains the Hub token"):
        hub_module.upload(settings, [(str(run), "", tuple(PUBLISHED_FILES))], "final push")
    assert_nothing_pushed(empty_hub, token)


def test_hub_settings_are_taken_whole_from_the_training_arguments(tmp_path, monkeypatch):
    """What --push_to_hub publishes where: a private repo stays private, a branch is pushed to, the strategy kept;
    the default repo name is the output folder's."""
    monkeypatch.chdir(tmp_path)
    argv = [a for a in training_argv(tmp_path / "my-run") if a != "--push_to_hub"]
    argv += ["--push_to_hub", "--hub_private_repo", "true", "--hub_revision", "dev", "--hub_strategy", "checkpoint",
             "--hub_token", "hf_test_private"]  # fmt: skip
    model_args, _, _, _, training_args = parse_args(argv)
    settings = hub_module.take_hub_settings(training_args, model_args)
    assert (settings.push_to_hub, settings.model_id, settings.private, settings.revision, settings.strategy) == (
        True, "my-run", True, "dev", "checkpoint"
    )  # fmt: skip
    assert (settings.token, settings.output_dir) == ("hf_test_private", str(tmp_path / "my-run"))
    assert training_args.push_to_hub is False and training_args.hub_token is None


def test_push_to_hub_refuses_a_base_model_given_as_a_relative_folder(tmp_path, tiny_t5_dir, monkeypatch):
    """A folder named relative to the current directory is as local as an absolute one."""
    import shutil

    shutil.copytree(tiny_t5_dir, tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    argv = training_argv(tmp_path / "run", "me/x") + ["--model_name_or_path", "base"]
    with pytest.raises(ArgumentError, match="--push_to_hub: the adapter's base model is the local folder base, "):
        run_main(argv)
    assert not (tmp_path / "run").exists()


def test_upload_goes_to_the_branch_asked_for_and_skips_a_missing_folder(tmp_path, empty_hub):
    run = tmp_path / "run"
    fill_folder(run, ["adapter_config.json", "adapter_model.safetensors"])
    settings = hub_module.HubSettings(
        push_to_hub=True, model_id="fake-user/branchy", revision="dev", output_dir=str(run)
    )
    patterns = ("adapter_config.json", "adapter_model.safetensors")
    assert hub_module.upload(settings, [(str(tmp_path / "missing"), "", patterns)], "nothing") == (0, None)
    count, _ = hub_module.upload(settings, [(str(run), "", patterns)], "to the branch")
    assert count == 2
    assert sorted(empty_hub.files("fake-user/branchy", revision="dev")) == sorted(patterns)
    assert empty_hub.files("fake-user/branchy") == {}  # not on main
