"""The command line: the three ways to start it, and the parsing rules (recipe vs flags, unknown flags, errors)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from prefix_tuning_utils import cli
from prefix_tuning_utils.arguments import ArgumentError, parse_args
from tests.conftest import REPO


QUICKSTART_DATA = str(REPO / "examples" / "quickstart.txt")
T5_LARGE_RECIPE = str(REPO / "recipes" / "t5-large_financial_phrasebank.yaml")
QUICKSTART_RECIPE = str(REPO / "recipes" / "quickstart.yaml")


def minimal_argv(tmp_path, *extra) -> list[str]:
    return ["--model_name_or_path", "t5-small", "--train_file", QUICKSTART_DATA, "--do_train",
            "--output_dir", str(tmp_path / "out"), *extra]  # fmt: skip


def one_line_error(capsys, argv) -> str:
    """Run the command line in-process; it must stop with exit code 2 and exactly one line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        cli.cli([str(a) for a in argv])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "usage:" not in captured.out + captured.err
    return err


# ------------------------------------------------------------------------------------------- the three entry points
@pytest.mark.slow
def test_console_script_help():
    """`pip install` puts `prefix-tuning` on PATH (CI installs the package); its --help is the script's."""
    executable = shutil.which("prefix-tuning")
    if executable is None:
        pytest.fail(
            "`prefix-tuning` is not on PATH: install the package (pip install -e .) to get the console script."
        )
    result = subprocess.run([executable, "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: prefix-tuning ")
    assert "--num_virtual_tokens" in result.stdout and "--push_only" in result.stdout


def test_help_in_process_documents_bare_debug(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.cli(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "A bare --debug (no value) shows the full traceback of an error instead of its one-line message." in text
    assert "underflow_overflow" in text  # the Trainer's own --debug values are still described


def help_text(capsys, monkeypatch, argv=("--help",)) -> str:
    """`prefix-tuning --help` in-process, at 80 columns (argparse wraps to the terminal's width)."""
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit_info:
        cli.cli(list(argv))
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_starts_with_the_usage_of_the_recipe_and_the_subcommands(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch)
    usage = text.split("\n\n")[0].splitlines()
    assert usage[0].startswith("usage: prefix-tuning [RECIPE.yaml] [FLAGS] ")
    assert [line.split()[:2] for line in usage[1:]] == [
        ["prefix-tuning", "push"],
        ["prefix-tuning", "serve"],
        ["prefix-tuning", "--version"],
    ]


def test_help_shows_our_groups_before_the_trainers(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch)
    headings = [line.split(" ")[0] for line in text.splitlines() if line and not line[0].isspace()][1:]
    assert headings[headings.index("options:") :][:7] == [
        "options:", "model", "prefix", "data", "predict", "output", "trainer",
    ]  # fmt: skip
    sections = {line.split(" ")[0]: i for i, line in enumerate(text.splitlines()) if line and not line[0].isspace()}
    lines = text.splitlines()

    def section_of(flag):
        where = next(i for i, line in enumerate(lines) if line.startswith(f"  {flag} "))
        return max((name for name, start in sections.items() if start < where), key=sections.get)

    assert section_of("--num_virtual_tokens") == "prefix" and section_of("--model_name_or_path") == "model"
    assert section_of("--train_file") == "data" and section_of("--predict_mode") == "predict"
    assert section_of("--overwrite_output_dir") == "output" and section_of("--output_dir") == "output"
    assert section_of("--learning_rate") == "trainer" and section_of("--optim") == "trainer"


def test_help_is_short_enough_to_read(capsys, monkeypatch):
    """At 80 columns: 172 flags (ours ~47, the Trainer's ~125) at about 4 lines each (the flag, 2-3 lines of help,
    its default) are about 750 lines; before this, the usage block alone was 150 lines (every flag, --optim's 41
    choices spelt out) on top of that, 894 in all. Nothing may spell out a long list of choices again."""
    text = help_text(capsys, monkeypatch)
    assert len(text.splitlines()) < 800
    assert max(map(len, text.splitlines())) < 200, max(text.splitlines(), key=len)
    assert "adamw_torch_npu_fused" not in text  # --optim shows a metavar and three of its names


def test_optim_still_checks_its_value(capsys, tmp_path):
    err = one_line_error(capsys, minimal_argv(tmp_path, "--optim", "adamw_nope"))
    assert "argument --optim: invalid choice: 'adamw_nope'" in err and "'adafactor'" in err


def test_version_prints_the_versions_and_exits_0(capsys):
    import importlib.metadata

    import torch
    import transformers

    import prefix_tuning_utils

    with pytest.raises(SystemExit) as exit_info:
        cli.cli(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"prefix-tuning {prefix_tuning_utils.__version__} ")
    assert f"torch {torch.__version__}" in out and f"transformers {transformers.__version__}" in out
    assert f"peft {importlib.metadata.version('peft')}" in out and len(out.splitlines()) == 1


@pytest.mark.slow  # two Python processes and a 5-epoch run: 26 s of CPU, 104 s wall at load 17 on 2 cores
def test_accelerate_launch_runs_the_quickstart_recipe(tmp_path):
    """The README's entry point, with its launch options (`accelerate launch --quiet --config_file
    accelerate_configs/default.yaml run_prefix_tuning.py RECIPE`): trains, evaluates and saves, and accelerate warns
    about nothing."""
    out = tmp_path / "quickstart"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        ["accelerate", "launch", "--quiet", "--config_file", "accelerate_configs/default.yaml", "run_prefix_tuning.py",
         "recipes/quickstart.yaml", "--output_dir", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "were not passed to `accelerate launch`" not in result.stderr
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_samples"] + results["eval_samples"] == 162  # examples/quickstart.txt, 10 % held out
    assert results["epoch"] == 5 and 0.0 <= results["eval_accuracy"] <= 1.0
    assert (out / "adapter_model.safetensors").is_file()


# --------------------------------------------------------------------------------------------- the parsing rules
@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--num_virtual_token", "10"], "unknown flag --num_virtual_token; did you mean --num_virtual_tokens?"),
        (["--epochs", "3"], "unknown flag --epochs; did you mean --num_train_epochs?"),
        (["--lerning_rate=0.1"], "unknown flag --lerning_rate; did you mean --learning_rate?"),
        (["--xyzzy"], "unknown flag --xyzzy; see --help."),
        (["stray"], "unexpected argument(s): stray."),
    ],
)
def test_unknown_flag_names_the_nearest_known_one(tmp_path, capsys, flags, expected):
    """No abbreviations: `--num_virtual_token 10` is an error, not `--num_virtual_tokens 10`."""
    err = one_line_error(capsys, minimal_argv(tmp_path, *flags))
    assert err.startswith(f"error: {expected}"), err
    assert not (tmp_path / "out").exists()


def test_unknown_flag_is_named_before_the_checks_it_disturbs(tmp_path):
    """A misspelt --train_file is reported as such, not as "No data given"."""
    with pytest.raises(ArgumentError, match=r"^unknown flag --train_fil; did you mean --train_file\?$"):
        parse_args(["--model_name_or_path", "t5-small", "--train_fil", QUICKSTART_DATA, "--do_train"])


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--tuning_method", "adapter"], "invalid choice: 'adapter' (choose from 'prefix', 'prompt', 'lora', 'full')"),
        (["--num_virtual_tokens", "ten"], "invalid int value: 'ten'"),
        (["--num_virtual_tokens"], "expected one argument"),
    ],
)
def test_invalid_value_is_one_line_exit_2(tmp_path, capsys, flags, expected):
    err = one_line_error(capsys, minimal_argv(tmp_path, *flags))
    assert expected in err and err.endswith("; see --help."), err


@pytest.mark.parametrize("flag", ["--train_file", "--train-file", "--train_file=", "--validation_file"])
def test_command_line_file_replaces_the_recipes_hub_dataset(tmp_path, flag):
    """The recipe names a Hub dataset; a data file on the command line is used instead (no download)."""
    given = [flag + QUICKSTART_DATA] if flag.endswith("=") else [flag, QUICKSTART_DATA]
    _, data_args, *_ = parse_args([T5_LARGE_RECIPE, *given, "--output_dir", str(tmp_path)])
    assert data_args.dataset_name is None and data_args.dataset_config_name is None
    assert QUICKSTART_DATA in (data_args.train_file, data_args.validation_file)
    assert data_args.label_words is None and data_args.validation_split_percentage == 10  # other keys still apply


def test_command_line_dataset_replaces_the_recipes_files(tmp_path):
    _, data_args, *_ = parse_args([QUICKSTART_RECIPE, "--dataset_name", "financial_phrasebank"])
    assert data_args.dataset_name == "financial_phrasebank"
    assert data_args.train_file is None and data_args.validation_file is None
    assert data_args.label_words == "negative,neutral,positive"  # the recipe's other data keys are kept


def test_other_data_flags_keep_the_recipes_source(tmp_path):
    _, data_args, *_ = parse_args([T5_LARGE_RECIPE, "--dataset_config_name", "sentences_75agree"])
    assert (data_args.dataset_name, data_args.dataset_config_name) == ("financial_phrasebank", "sentences_75agree")
    _, data_args, *_ = parse_args([QUICKSTART_RECIPE, "--test_file", QUICKSTART_DATA, "--do_predict"])
    assert data_args.train_file == "examples/quickstart.txt" and data_args.test_file == QUICKSTART_DATA


def test_bare_debug_shows_the_traceback_of_a_parse_error(tmp_path):
    with pytest.raises(ArgumentError, match="did you mean --num_train_epochs"):
        cli.cli(minimal_argv(tmp_path, "--epochs", "3", "--debug"))


def test_script_is_a_shim_over_the_package():
    """run_prefix_tuning.py holds no logic: it starts prefix_tuning_utils.cli.cli, as the console script does."""
    code = [
        line
        for line in (REPO / "run_prefix_tuning.py").read_text().split('"""')[-1].splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert code == ["from prefix_tuning_utils.cli import cli", 'if __name__ == "__main__":', "    cli()"]
    assert "prefix-tuning = prefix_tuning_utils.cli:cli" in (REPO / "setup.cfg").read_text()
    assert sys.modules["prefix_tuning_utils.cli"] is cli


# ------------------------------------------------------------------------------------------ the --max_*_samples caps
def test_each_max_samples_flag_caps_its_own_split(tmp_path, tiny_t5_dir):
    """The quickstart's 162 sentences: 145 train, 17 held out (10 %); a test file of 162. Each cap applies to its own
    split only, and the validation split is held out of the whole training file, not of the capped rows."""
    common = ["--model_name_or_path", tiny_t5_dir, "--train_file", QUICKSTART_DATA, "--do_train", "--do_eval",
              "--report_to", "none", "--disable_tqdm", "true"]  # fmt: skip
    argv = [*common, "--output_dir", tmp_path / "all", "--max_steps", "1", "--save_strategy", "no", "--eval_mode",
            "score", "--max_train_samples", "24", "--max_eval_samples", "6", "--max_predict_samples", "3",
            "--do_predict", "--test_file", QUICKSTART_DATA]  # fmt: skip
    cli.main([str(a) for a in argv])
    results = json.loads((tmp_path / "all" / "all_results.json").read_text())
    assert (results["train_samples"], results["eval_samples"], results["predict_rows"]) == (24, 6, 3)
    # One cap alone leaves the other splits whole (checked before any weight is loaded).
    for flag, sizes in (("--max_train_samples", (24, 17)), ("--max_eval_samples", (145, 5))):
        value = str(sizes[0] if flag == "--max_train_samples" else sizes[1])
        run = cli.resolve_and_validate([str(a) for a in [*common, "--output_dir", tmp_path / flag, flag, value]])
        assert (len(run.splits["train"]), len(run.splits["validation"])) == sizes, flag
