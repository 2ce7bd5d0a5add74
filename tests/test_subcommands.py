"""One parser for every command: the first word names a subcommand (`push`), the rest is parsed by the same parser
class and recipe rules as a training run, with the same one-line refusals. Publishing itself is in test_publish.py."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from prefix_tuning_utils import cli
from tests.conftest import REPO
from tests.helpers import run_cli


PUSH_FLAGS = ("--output_dir", "--hub_model_id", "--hub_token", "--hub_private_repo", "--hub_revision")


def test_push_help_lists_the_push_flags_only(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.cli(["push", "--help"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0 and err == ""
    assert out.startswith("usage: prefix-tuning push [-h] [--output_dir OUTPUT_DIR]")
    for flag in PUSH_FLAGS:
        assert f"  {flag} " in out, flag
    assert "--num_virtual_tokens" not in out and "--learning_rate" not in out


@pytest.mark.slow  # the console script, in a process of its own
def test_console_script_push_help():
    executable = shutil.which("prefix-tuning")
    assert executable is not None, "install the package (pip install -e .) to get the console script"
    result = subprocess.run([executable, "push", "--help"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: prefix-tuning push ")


@pytest.mark.parametrize(
    "command, help_command",
    [
        ([], "python run_prefix_tuning.py --help"),
        (["push"], "prefix-tuning push --help"),
    ],
    ids=["training", "push"],
)
def test_a_misspelt_recipe_key_is_one_line_exit_2_naming_the_nearest_key(tmp_path, capsys, command, help_command):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "hub_revison": "dev", "do_train": True}))
    code, err = run_cli([*command, recipe], capsys)
    assert code == 2
    assert err.splitlines() == [
        f"error: Recipe {recipe} has unknown key(s): hub_revison. Did you mean hub_revision? See `{help_command}`."
    ]
    assert not (tmp_path / "run").exists()


def test_several_misspelt_keys_are_each_named_with_their_nearest(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"hub_revison": "dev", "learnig_rate": 0.1, "zzz": 1}))
    code, err = run_cli(["push", recipe], capsys)
    assert code == 2
    assert err.splitlines() == [
        f"error: Recipe {recipe} has unknown key(s): hub_revison, learnig_rate, zzz. Did you mean hub_revision (for "
        "hub_revison), learning_rate (for learnig_rate)? See `prefix-tuning push --help`."
    ]


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--hub_revison", "dev"], "unknown flag --hub_revison; did you mean --hub_revision?"),
        (["--xyzzy"], "unknown flag --xyzzy; see --help."),
        (["--hub_private_repo", "maybe"], "Truthy value expected: got maybe"),
        (["--num_train_epochs", "2"], "`prefix-tuning push` publishes a finished run and takes only --output_dir, "
         "--hub_model_id, --hub_token, --hub_private_repo and --hub_revision (or a recipe); got --num_train_epochs 2."),
    ],
)  # fmt: skip
def test_push_refuses_bad_flags_in_one_line_exit_2(tmp_path, capsys, flags, expected):
    code, err = run_cli(["push", "--output_dir", tmp_path / "run", *flags], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert expected in err and "Traceback" not in err


def test_push_refuses_an_invalid_repo_id_before_reading_the_run(tmp_path, capsys):
    code, err = run_cli(["push", "--output_dir", tmp_path / "run", "--hub_model_id", "bad name!"], capsys)
    assert code == 2 and err.startswith("error: --hub_model_id 'bad name!' is not a valid Hub repo id"), err


def test_push_needs_an_output_dir(capsys):
    code, err = run_cli(["push", "--hub_model_id", "me/x"], capsys)
    assert (code, err) == (
        2,
        "error: `prefix-tuning push` needs --output_dir: the folder of the finished run to publish.\n",
    )


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["push", "--output_dir", "d"], ("push", ["--output_dir", "d"], None)),
        (["serve", "--adapter", "a=runs/a"], ("serve", ["--adapter", "a=runs/a"], None)),
        (["--push_only", "--output_dir", "d"], ("push", ["--output_dir", "d"], "--push_only")),
        (["r.yaml", "--push_only", "true", "--output_dir", "d"], ("push", ["r.yaml", "--output_dir", "d"], "--push_only")),
        (["--output_dir", "d", "--push_only=true"], ("push", ["--output_dir", "d"], "--push_only")),
        (["--output_dir", "push"], (None, ["--output_dir", "push"], None)),  # a value, not the first word
        (["r.yaml", "push"], (None, ["r.yaml", "push"], None)),
        ([], (None, [], None)),
    ],
)  # fmt: skip
def test_the_first_word_names_the_subcommand(argv, expected):
    assert cli.split_subcommand(argv) == expected
    assert set(cli.SUBCOMMANDS) == {"push", "serve"}
