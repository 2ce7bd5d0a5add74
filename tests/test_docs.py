"""Every command in the fenced ```bash blocks of README.md and docs/*.md is run by a test (issue #30, acceptance 3).

Each documented command is in exactly one of these tables:

* `RUN_HERE`: cheap, run by this file in the default suite (in-process: `--help`, `--version`);
* `RUN_SLOW`: run by this file as the reader would run it, under `slow` (training, collecting the suite);
* `RUN_BY_CI`: run by `.ci/run` (the install, the test command), checked against that file's text;
* `COVERED_BY`: run by another test, named as `file::test` (its existence is checked), with how it runs it;
* `CANNOT_RUN`: needs hardware, machines or time the tests cannot have, with the reason.

A command added to the docs without an entry fails `test_every_documented_command_is_covered`; an entry whose command
left the docs fails too, so the tables stay the docs' own.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from prefix_tuning_utils import cli
from tests.conftest import REPO


def documented_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def commands_of(text: str) -> list[str]:
    """The commands of the ```bash blocks of a Markdown text, each as one line (continuations joined, comments and
    extra spaces dropped). In a block with `$ ` prompts only the prompted lines are commands (the rest is output)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        lines = block.replace("\\\n", " ").splitlines()
        prompted = any(line.startswith("$ ") for line in lines)
        for line in lines:
            if prompted and not line.startswith("$ "):
                continue
            line = line.removeprefix("$ ").strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(shlex.join(shlex.split(line, comments=True)).split()))
    return commands


def documented_commands() -> dict[str, list[str]]:
    """{command: the files that show it}."""
    found: dict[str, list[str]] = {}
    for path in documented_files():
        for command in commands_of(path.read_text(encoding="utf-8")):
            found.setdefault(command, []).append(str(path.relative_to(REPO)))
    return found


RUN_HERE = {
    "prefix-tuning --help": "usage: prefix-tuning [RECIPE.yaml] [FLAGS]",
    "python run_prefix_tuning.py --help": "usage: prefix-tuning [RECIPE.yaml] [FLAGS]",
    "prefix-tuning --version": "prefix-tuning ",
}
QUICKSTART = "python run_prefix_tuning.py recipes/quickstart.yaml"
RUN_SLOW = [
    # the quickstart first: the commands after it use its runs/quickstart
    QUICKSTART,
    "python run_prefix_tuning.py recipes/quickstart.yaml --num_virtual_tokens 10 --output_dir runs/nvt10",
    "python run_prefix_tuning.py --model_name_or_path runs/quickstart --test_file examples/quickstart.txt --do_predict "
    "--output_dir runs/news --per_device_eval_batch_size 64",
    "python -m pytest",
    "python -m pytest -m slow",
]
RUN_BY_CI = {  # command: what .ci/run holds for it
    "pip install -e '.[dev]'": '-e ".[dev]"',
    "python -m pytest -m 'not gpu and not multi_gpu'": '\npython -m pytest -m "not gpu and not multi_gpu"\n',
}
MAIN_JOB = (
    "accelerate launch --quiet --config_file accelerate_configs/default.yaml run_prefix_tuning.py "
    "recipes/t5-large_financial_phrasebank.yaml"
)
SERVE = "tests/test_serve_process.py::test_readme_serving_example"
SERVED = "trains the two adapters and starts the server as shown, then sends each body shown and compares the answer"
CURL = "curl -s 127.0.0.1:8000/predict -H 'Content-Type: application/json' -d "
PUBLISH = "tests/test_publish.py::test_push_to_hub_publishes_an_adapter_that_loads_with_the_plain_snippet"
T5_LARGE = "python run_prefix_tuning.py recipes/t5-large_financial_phrasebank.yaml"
COVERED_BY = {  # command: (the test that runs it, how)
    MAIN_JOB: (
        "tests/test_network_faults.py::test_the_documented_command_ends_in_one_line_after_a_bounded_wait",
        "reads the command from README.md and runs it without a Hub (t5-large cannot be downloaded here)",
    ),
    "prefix-tuning recipes/quickstart.yaml --output_dir /tmp/acme": (SERVE, SERVED),
    "prefix-tuning recipes/quickstart.yaml --output_dir /tmp/globex --num_virtual_tokens 10": (SERVE, SERVED),
    "prefix-tuning serve --adapter acme=/tmp/acme --adapter globex=/tmp/globex": (SERVE, SERVED),
    CURL
    + shlex.quote(
        '{"inputs": "Borealis Bank said its net sales rose 25 percent from a year earlier .", "adapter": "acme"}'
    ): (SERVE, SERVED),
    CURL
    + shlex.quote(
        '{"inputs": ["Acme Corp will publish its quarterly results on Tuesday .", "Fjord Telecom said its operating '
        'profit fell 40 percent ."], "adapter": ["acme", "globex"], "top_k": 1}'
    ): (SERVE, SERVED),
    CURL + shlex.quote('{"inputs": "Profit rose .", "adapter": "initech"}'): (SERVE, SERVED),
    f"{T5_LARGE} --push_to_hub --hub_model_id you/fpb-prefix": (
        PUBLISH,
        "the same flags on the quickstart's tiny T5 against tests/fake_hub.py (no Hub, no t5-large here)",
    ),
    "python run_prefix_tuning.py recipes/quickstart.yaml --model_name_or_path fake-user/tiny-t5 --output_dir "
    "runs/tiny-prefix --push_to_hub --hub_model_id fake-user/tiny-prefix --hub_token '<redacted>' --logging_steps 1": (
        PUBLISH,
        "this run, against tests/fake_hub.py (docs/example_model_card.md is its card)",
    ),
    "prefix-tuning push --output_dir runs/x --hub_model_id you/x": (
        "tests/test_publish.py::test_push_subcommand_publishes_a_finished_run",
        "`push` of a finished run to tests/fake_hub.py",
    ),
    "prefix-tuning push --output_dir runs/x --hub_model_id you/x --hub_token '<your' 'token>'": (
        "tests/test_publish.py::test_push_subcommand_publishes_a_finished_run",
        "`push` with --hub_token to tests/fake_hub.py",
    ),
    f"{T5_LARGE} --num_virtual_tokens 30 --output_dir runs/nvt30": (
        "tests/test_run.py::test_recipe_values_are_overridden_by_flags",
        "parses the recipe with --num_virtual_tokens and --output_dir overriding it (no t5-large here)",
    ),
    f"{T5_LARGE} --train_file my_sentences.txt": (
        "tests/test_cli.py::test_command_line_file_replaces_the_recipes_hub_dataset",
        "parses the recipe with --train_file replacing its Hub dataset",
    ),
    f"{T5_LARGE} --dataset_config_name sentences_75agree": (
        "tests/test_cli.py::test_other_data_flags_keep_the_recipes_source",
        "parses the recipe with --dataset_config_name adjusting its source",
    ),
    "python run_prefix_tuning.py --model_name_or_path runs/quickstart --test_file news.txt --do_predict --output_dir "
    "runs/news --per_device_eval_batch_size 64": (
        "tests/test_predict.py::test_adapter_folder_predicts_with_its_saved_labels_and_source_prefix",
        "--do_predict with an adapter folder as the model (README.md runs this command on examples/quickstart.txt)",
    ),
    "accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no "
    "run_prefix_tuning.py --use_cpu --model_name_or_path runs/quickstart --test_file news.txt --do_predict "
    "--output_dir runs/news": (
        "tests/test_predict.py::test_two_processes_under_accelerate_launch_write_the_same_file",
        "these launch options on 2 CPU processes",
    ),
}
CANNOT_RUN = {  # command: why no test runs it
    "accelerate launch --config_file accelerate_configs/multi_gpu.yaml run_prefix_tuning.py "
    "recipes/t5-large_financial_phrasebank.yaml": "several GPUs (test_distributed.py runs DDP on 2 CPU processes)",
    "accelerate launch --config_file accelerate_configs/fsdp.yaml run_prefix_tuning.py "
    "recipes/t5-large_financial_phrasebank.yaml --model_name_or_path t5-11b --per_device_train_batch_size 1 "
    "--output_dir runs/t5-11b": "GPUs and t5-11b (test_distributed.py saves under FSDP on 2 CPU processes)",
    "accelerate launch --config_file accelerate_configs/multi_node.yaml --num_machines 2 --num_processes 16 "
    "--machine_rank 0 --main_process_ip 10.0.0.1 --main_process_port 29500 run_prefix_tuning.py "
    "recipes/t5-large_financial_phrasebank.yaml": "two machines with 8 GPUs (test_distributed.py: 2 on loopback)",
    "export 'MAIN_IP=$(scontrol' show hostnames '$SLURM_JOB_NODELIST' '|' head -n '1)'": "a Slurm cluster",
    'srun bash -c \'accelerate launch --config_file accelerate_configs/fsdp.yaml --num_machines "$SLURM_NNODES" '
    '--num_processes $((SLURM_NNODES * 8)) --machine_rank "$SLURM_NODEID" --main_process_ip "$MAIN_IP" '
    "--main_process_port 29500 run_prefix_tuning.py recipes/t5-large_financial_phrasebank.yaml --model_name_or_path "
    "t5-11b --output_dir runs/t5-11b'": "a Slurm cluster with GPUs",
    "pip install -e '.[mutation]'": "installs mutmut from PyPI (the tests install nothing)",
    "tools/mutation.sh readers": "minutes to an hour per module on 2 cores (docs/testing.md); by hand, not in CI",
    "tools/mutation.sh readers main": "the same, against another commit's tests",
}


def tables() -> dict[str, str]:
    """{command: the table that covers it}; a command in two tables is an error."""
    entries = [(command, "RUN_HERE") for command in RUN_HERE] + [(command, "RUN_SLOW") for command in RUN_SLOW]
    entries += [(command, "RUN_BY_CI") for command in RUN_BY_CI] + [(command, "COVERED_BY") for command in COVERED_BY]
    entries += [(command, "CANNOT_RUN") for command in CANNOT_RUN]
    seen: dict[str, str] = {}
    for command, table in entries:
        assert command not in seen, f"{command!r} is in {seen[command]} and {table}"
        seen[command] = table
    return seen


def test_commands_are_read_as_a_reader_would_type_them():
    text = "```bash\n$ curl -s x \\\n    -d '{\"a\": 1}'\n{\"out\": 2}\n```\n\n```bash\n# a comment\nprog --flag  'a b'  # why\n```\n"
    assert commands_of(text) == ["curl -s x -d '{\"a\": 1}'", "prog --flag 'a b'"]
    assert commands_of("```python\nprint(1)\n```\n") == []


def test_every_documented_command_is_covered():
    documented, covered = documented_commands(), tables()
    missing = {command: files for command, files in documented.items() if command not in covered}
    assert not missing, f"documented commands no test runs (add each to a table of tests/test_docs.py): {missing}"
    stale = sorted(set(covered) - set(documented))
    assert not stale, f"commands in tests/test_docs.py that no README.md or docs/*.md shows any more: {stale}"


def test_the_commands_that_no_test_can_run_are_few():
    assert len(CANNOT_RUN) <= 8 and all(len(reason) > 10 for reason in CANNOT_RUN.values())


@pytest.mark.parametrize("command", sorted(COVERED_BY))
def test_the_test_that_runs_a_command_exists(command):
    node, how = COVERED_BY[command]
    path, name = node.split("::")
    assert re.search(rf"^def {name}\(", (REPO / path).read_text(encoding="utf-8"), re.M), f"{node} is gone"
    assert how


def test_ci_runs_the_readme_install_and_test_command():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    for fragment in RUN_BY_CI.values():
        assert fragment in ci
    # the README's test command is the one .ci/run ends with, exactly
    readme = commands_of((REPO / "README.md").read_text(encoding="utf-8"))
    test_command = next(command for command in readme if command.startswith("python -m pytest"))
    assert shlex.split(ci.strip().splitlines()[-1]) == shlex.split(test_command)


@pytest.mark.parametrize("command", sorted(RUN_HERE))
def test_help_and_version_commands_run_as_documented(command, capsys):
    argv = shlex.split(command)
    argv = argv[2:] if argv[0] == "python" else argv[1:]  # `python run_prefix_tuning.py ...` or `prefix-tuning ...`
    with pytest.raises(SystemExit) as exit_info:
        cli.cli(argv)
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(RUN_HERE[command])


def moved_to(args: list[str], runs: Path) -> list[str]:
    """The command's `runs/...` folders under `runs` (nothing written into the repository)."""
    return [str(runs / arg.removeprefix("runs/")) if arg.startswith("runs/") else arg for arg in args]


@pytest.mark.slow  # three training or prediction runs and two collections of the suite: about 2 minutes on 2 cores
def test_the_documented_runs_and_test_commands_work(tmp_path):
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for command in RUN_SLOW:
        args = moved_to(shlex.split(command), runs)
        if command == QUICKSTART:
            args += ["--output_dir", str(runs / "quickstart")]  # the recipe's own runs/quickstart, moved
        if args[:3] == ["python", "-m", "pytest"]:
            args += ["--collect-only", "-q", "-p", "no:cacheprovider"]
        result = subprocess.run(
            [sys.executable, *args[1:]], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-2000:])
        if args[:3] == ["python", "-m", "pytest"]:
            assert re.search(r"^\d+(/\d+)? tests? collected", result.stdout, re.M), result.stdout[-500:]
    assert (runs / "quickstart" / "adapter_model.safetensors").is_file()
    assert (runs / "nvt10" / "adapter_model.safetensors").is_file()
    assert (runs / "news" / "predictions.jsonl").is_file()
