"""End-to-end runs of `prefix_tuning_utils.cli.main()` in-process, on tiny models (seconds each)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import AutoTokenizer

from prefix_tuning_utils import cli
from prefix_tuning_utils.arguments import DataTrainingArguments, ModelArguments, PredictArguments, PrefixArguments
from tests.conftest import REPO, assert_trained_and_evaluated
from tests.helpers import plain_usage_snippet, run_main


def test_quickstart_recipe_runs_and_adapter_loads_with_plain_snippet(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "quickstart"
    trainer = run_main(["recipes/quickstart.yaml", "--output_dir", out])
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "all_results.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "all_results.json").read_text())
    assert {"eval_accuracy", "eval_macro_f1", "train_loss"} <= set(results)
    assert_trained_and_evaluated(trainer, out, steps=trainer.state.max_steps, mode="generate")

    sentences = ["Acme Corp said its net sales rose 12 percent from a year earlier .", "Fjord Telecom has 3 offices ."]
    answers = plain_usage_snippet(out, sentences)
    # The snippet must give exactly what the trained model in memory gives.
    model = trainer.model.eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = tokenizer.batch_decode(model.generate(**batch, max_new_tokens=5), skip_special_tokens=True)
    assert answers == expected


def test_financial_phrasebank_file_end_to_end(tmp_path, tiny_t5_dir, phrasebank_dir):
    out = tmp_path / "fpb"
    run_main(
        [
            "--model_name_or_path", tiny_t5_dir,
            "--train_file", phrasebank_dir / "Sentences_AllAgree.txt",
            "--label_words", "negative,neutral,positive",
            "--output_dir", out,
            "--do_train", "--do_eval", "--predict_with_generate",
            "--max_steps", "3",
            "--per_device_train_batch_size", "8",
            "--per_device_eval_batch_size", "64",
            "--learning_rate", "1e-2",
            "--report_to", "none",
        ]
    )  # fmt: skip
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_samples"] == 2037
    assert results["eval_samples"] == 227
    assert 0.0 <= results["eval_accuracy"] <= 1.0 and 0.0 <= results["eval_macro_f1"] <= 1.0
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] == results["eval_accuracy"]
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "PREFIX_TUNING" and adapter["num_virtual_tokens"] == 20


def test_help_lists_every_argument_with_its_help(capsys):
    """In-process (a real process runs the script in the slow test_bad_input_exit_code_in_a_real_process)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.cli(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for dataclass in (ModelArguments, DataTrainingArguments, PrefixArguments, PredictArguments):
        for field in dataclasses.fields(dataclass):
            assert f"--{field.name}" in text, field.name
            first_words = " ".join(field.metadata["help"].split()[:6])
            assert first_words in text, (field.name, first_words)
    for flag in ("--learning_rate", "--num_train_epochs", "--predict_with_generate", "--bf16", "--push_to_hub"):
        assert flag in text


def test_recipe_values_are_overridden_by_flags(tmp_path, monkeypatch):
    from prefix_tuning_utils.arguments import parse_args

    monkeypatch.chdir(REPO)
    model_args, data_args, prefix_args, _, training_args = parse_args(
        ["recipes/t5-large_financial_phrasebank.yaml", "--num_virtual_tokens", "7", "--output_dir", str(tmp_path)]
    )
    assert model_args.model_name_or_path == "t5-large"
    assert data_args.dataset_name == "financial_phrasebank" and data_args.validation_split_percentage == 10
    assert prefix_args.num_virtual_tokens == 7
    assert training_args.learning_rate == 1e-2 and training_args.num_train_epochs == 5
    assert training_args.per_device_train_batch_size == 8 and training_args.output_dir == str(tmp_path)


@pytest.mark.parametrize(
    "method, extra, expected",
    [
        ("prefix", [], 1e-2),
        ("prompt", [], 1e-2),
        ("lora", [], 1e-3),
        ("full", [], 5e-5),
        ("full", ["--learning_rate", "0.01"], 1e-2),  # given on the command line: kept
        ("prefix", ["--learning-rate=3e-4"], 3e-4),
    ],
)
def test_learning_rate_defaults_to_the_tuning_methods(tmp_path, method, extra, expected):
    """Without --learning_rate each method gets its usual rate (transformers' 5e-5 would leave a prefix untrained)."""
    from prefix_tuning_utils.arguments import parse_args

    quickstart = REPO / "examples" / "quickstart.txt"
    argv = ["--model_name_or_path", "t5-small", "--train_file", quickstart, "--do_train", "--output_dir", tmp_path]
    training_args = parse_args([str(a) for a in argv] + ["--tuning_method", method, *extra])[-1]
    assert training_args.learning_rate == expected
    # a recipe's rate counts as given, whatever the method
    recipe = parse_args([str(REPO / "recipes" / "quickstart.yaml"), "--tuning_method", method, *extra])[-1]
    assert recipe.learning_rate == (expected if extra else 0.05)


@pytest.mark.parametrize(
    "content, message",
    [
        ("model_name_or_path: t5-small\nnum_virtual_tokenz: 5\n", "unknown key(s): num_virtual_tokenz"),
        ("model_name_or_path: [t5-small\n", "not valid YAML"),
    ],
)
def test_bad_recipe_is_refused_with_one_line(tmp_path, capsys, content, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        cli.cli([str(recipe), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
