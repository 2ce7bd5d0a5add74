"""`--do_predict`'s resume, function by function (prefix_tuning_utils/predict.py), without a model.

The end-to-end resume tests (tests/test_predict.py) run the whole command; these pin each step against literals:
the complete rows of a file cut mid-write (`_complete_rows`, across its 1 MiB read blocks too), the decision to start
afresh, resume or refuse (`_start_or_resume`: what it leaves on disk each time), the settings a resume must match
(`_settings`), the model files whose change means "retrained in place" (`_model_identity`), and the check that the
rows kept follow on from the input (`_resume`). They are the mutation-testing selection of predict's resume
(setup.cfg, [mutation]; docs/mutation_testing.md).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from prefix_tuning_utils.arguments import ArgumentError
from prefix_tuning_utils.predict import (
    InputSummary,
    _complete_rows,
    _model_identity,
    _resume,
    _settings,
    _start_or_resume,
    count_complete_rows,
)
from prefix_tuning_utils.readers import Row


SETTINGS = {"input": "/data/news.txt", "input_digest": "d1", "source_prefix": "", "max_source_length": 256}


def row(line: int) -> bytes:
    return json.dumps({"line": line, "text": f"sentence {line}", "label": "neutral"}).encode() + b"\n"


def write_state(folder: Path, settings: dict | None, rows: int = 10) -> None:
    state = {"rows": rows, "complete": False} if settings is None else {"settings": settings, "rows": rows}
    (folder / "predictions.state.json").write_text(json.dumps(state), encoding="utf-8")


# --- _complete_rows: the rows written whole, and where they end ---


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", (0, 0, None)),
        (b'{"line": 1, "te', (0, 0, None)),  # killed before the first row was written whole
        (b'{"line": 1}\n', (1, 12, b'{"line": 1}')),
        (b'{"line": 1}\n{"line": 3}\n{"line": 4, "te', (2, 24, b'{"line": 3}')),
        (b'{"line": 1}\n{"line": 3}\n', (2, 24, b'{"line": 3}')),
        (b"\n", (1, 1, b"")),
    ],
)
def test_complete_rows_of_a_file_cut_mid_write(tmp_path, content, expected):
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(content)
    assert _complete_rows(str(path)) == expected
    assert count_complete_rows(str(path)) == expected[0]


def test_complete_rows_across_read_blocks(tmp_path):
    """Rows of 100 bytes over 2.4 MiB (the reader takes 1 MiB at a time), then a partial row longer than a block:
    the last newline lies two blocks before the end of the file."""
    rows = [b'{"line": %06d, "text": "' % i + b"x" * 71 + b'"}\n' for i in range(1, 25001)]
    assert {len(r) for r in rows} == {100}
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(b"".join(rows) + b'{"line": 025001, "text": "' + b"y" * (3 << 20))
    assert _complete_rows(str(path)) == (25000, 2_500_000, rows[-1][:-1])
    path.write_bytes(b"".join(rows[:10486]))  # 1,048,600 bytes: the last newline is 24 bytes into the second block
    assert _complete_rows(str(path)) == (10486, 1_048_600, rows[10485][:-1])


def test_a_last_row_longer_than_a_read_block_is_read_whole(tmp_path):
    """A sentence of 1.5 MiB: its row is the last complete one, and spans two blocks (it used to be cut to its last
    1 MiB, which is no JSON: the resume stopped with a traceback)."""
    long_row = json.dumps({"line": 2, "text": "x" * (3 << 19)}).encode() + b"\n"
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(row(1) + long_row + b'{"line": 3, "te')
    assert _complete_rows(str(path)) == (2, len(row(1)) + len(long_row), long_row[:-1])
    write_state(tmp_path, SETTINGS)
    assert _start_or_resume(str(tmp_path), SETTINGS, 3, overwrite=False) == (2, 2)
    assert path.read_bytes() == row(1) + long_row
    path.write_bytes(long_row + row(3))  # the long row first: the last one starts in the second block
    assert _complete_rows(str(path)) == (2, len(long_row) + len(row(3)), row(3)[:-1])


def test_a_newline_at_the_start_of_a_read_block_ends_a_row(tmp_path):
    """The first row fills the first 1 MiB block exactly; its newline is the first byte of the second block, which
    then holds the whole last row."""
    first = json.dumps({"line": 1, "text": "x" * ((1 << 20) - 23)}).encode()
    assert len(first) == 1 << 20
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(first + b"\n" + row(2))
    assert _complete_rows(str(path)) == (2, (1 << 20) + 1 + len(row(2)), row(2)[:-1])


# --- _start_or_resume: start afresh, resume, or refuse; what each leaves on disk ---


def test_a_fresh_folder_starts_an_empty_file_and_a_state_and_clears_old_outputs(tmp_path):
    for name in ("predictions.csv", "predict_confusion_matrix.png", "notes.txt"):
        (tmp_path / name).write_text("old")
    assert _start_or_resume(str(tmp_path), SETTINGS, 10, overwrite=False) == (0, None)
    assert (tmp_path / "predictions.jsonl").read_bytes() == b""
    assert json.loads((tmp_path / "predictions.state.json").read_text(encoding="utf-8")) == {
        "settings": SETTINGS, "rows": 10, "complete": False
    }  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "predictions.jsonl", "predictions.state.json"]


def test_the_state_file_is_written_whole_as_indented_utf8(tmp_path):
    settings = {**SETTINGS, "source_prefix": "Stimmung : ", "labels": ["négatif", "positif"]}
    _start_or_resume(str(tmp_path), settings, 3, overwrite=False)
    text = (tmp_path / "predictions.state.json").read_text(encoding="utf-8")
    assert text.endswith('\n  "rows": 3,\n  "complete": false\n}\n')
    assert '"labels": [\n      "négatif",\n      "positif"\n    ]' in text  # as written, not \u00e9
    assert not (tmp_path / "predictions.state.json.tmp").exists()


def test_same_settings_resume_after_the_last_complete_row_and_cut_the_partial_one(tmp_path, caplog):
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(row(2) + row(3) + row(7) + row(8)[:9])
    write_state(tmp_path, dict(SETTINGS))
    with caplog.at_level(logging.INFO, logger="prefix_tuning_utils.predict"):
        assert _start_or_resume(str(tmp_path), dict(SETTINGS), 10, overwrite=False) == (3, 7)
    assert path.read_bytes() == row(2) + row(3) + row(7)
    assert f"{path} ended with a partial row (interrupted mid-write); it was removed." in caplog.text
    assert f"Resuming: {path} already holds 3 of 10 rows." in caplog.text


def test_a_file_with_whole_rows_only_is_resumed_as_it_is(tmp_path, caplog):
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(row(1) + row(2))
    write_state(tmp_path, SETTINGS, rows=2)
    with caplog.at_level(logging.INFO, logger="prefix_tuning_utils.predict"):
        assert _start_or_resume(str(tmp_path), SETTINGS, 2, overwrite=False) == (2, 2)  # as many rows as the input
    assert path.read_bytes() == row(1) + row(2)
    assert "partial row" not in caplog.text
    assert (tmp_path / "predictions.state.json").read_text(encoding="utf-8") == json.dumps(
        {"settings": SETTINGS, "rows": 2}
    )  # untouched


def test_an_empty_file_of_the_same_settings_resumes_from_nothing(tmp_path, caplog):
    (tmp_path / "predictions.jsonl").write_bytes(b"")
    write_state(tmp_path, SETTINGS)
    with caplog.at_level(logging.INFO, logger="prefix_tuning_utils.predict"):
        assert _start_or_resume(str(tmp_path), SETTINGS, 10, overwrite=False) == (0, None)
    assert "Resuming" not in caplog.text


def test_a_file_longer_than_the_input_is_refused_and_left(tmp_path):
    path = tmp_path / "predictions.jsonl"
    content = row(1) + row(2) + row(3)
    path.write_bytes(content)
    write_state(tmp_path, SETTINGS)
    with pytest.raises(ArgumentError) as error:
        _start_or_resume(str(tmp_path), SETTINGS, 2, overwrite=False)
    assert str(error.value) == f"{path} has 3 rows but the input has only 2; pass --overwrite_predictions."
    assert path.read_bytes() == content


def test_other_predictions_are_refused_and_left_unless_overwrite(tmp_path):
    path = tmp_path / "predictions.jsonl"
    content = row(1) + row(2)[:5]
    path.write_bytes(content)
    with pytest.raises(ArgumentError) as error:  # no state file: not written by a run of this program
        _start_or_resume(str(tmp_path), SETTINGS, 10, overwrite=False)
    assert str(error.value) == (
        f"{path} exists but was not written by this run (predictions.state.json is missing); pass "
        "--overwrite_predictions to replace it, or choose another --output_dir."
    )
    write_state(tmp_path, {**SETTINGS, "source_prefix": "s: ", "input_digest": "d0"})
    with pytest.raises(ArgumentError) as error:
        _start_or_resume(str(tmp_path), SETTINGS, 10, overwrite=False)
    assert str(error.value) == (
        f"{path} holds predictions made from another input or with other settings (changed: input_digest, "
        "source_prefix); pass --overwrite_predictions to start again, or choose another --output_dir."
    )
    write_state(tmp_path, None)  # a state without settings (another version): every setting counts as changed
    with pytest.raises(ArgumentError, match=r"\(changed: input, max_source_length, source_prefix\); pass"):
        _start_or_resume(str(tmp_path), SETTINGS, 10, overwrite=False)
    assert path.read_bytes() == content
    assert _start_or_resume(str(tmp_path), SETTINGS, 10, overwrite=True) == (0, None)
    assert path.read_bytes() == b""
    assert json.loads((tmp_path / "predictions.state.json").read_text())["settings"] == SETTINGS


# --- _model_identity: what says a model folder was retrained in place ---


def test_model_identity_lists_weights_and_configs_only(tmp_path):
    files = {
        "config.json": 11, "adapter_config.json": 12, "prefix_tuning.json": 13, "adapter_model.safetensors": 14,
        "model.safetensors.index.json": 15, "model.gguf": 16, "pytorch_model.bin": 17,
        "pytorch_model.bin.index.json": 18,
        # not the model: the training arguments, a card, tokenizer files, predictions in the model's own folder
        "training_args.bin": 1, "README.md": 2, "tokenizer.json": 3, "spiece.model": 4, "predictions.jsonl": 5,
        "config.json.bak": 6, "predictions.state.json": 7,
    }  # fmt: skip
    for number, (name, size) in enumerate(files.items()):
        (tmp_path / name).write_bytes(b"w" * size)
        os.utime(tmp_path / name, ns=(1_000_000_000 * number, 1_000_000_000 * number + 7))
    (tmp_path / "checkpoint-5.bin").mkdir()  # a folder, whatever its name
    assert _model_identity(str(tmp_path)) == [
        ["adapter_config.json", 12, 1_000_000_007],
        ["adapter_model.safetensors", 14, 3_000_000_007],
        ["config.json", 11, 7],
        ["model.gguf", 16, 5_000_000_007],
        ["model.safetensors.index.json", 15, 4_000_000_007],
        ["prefix_tuning.json", 13, 2_000_000_007],
        ["pytorch_model.bin", 17, 6_000_000_007],
        ["pytorch_model.bin.index.json", 18, 7_000_000_007],
    ]
    assert _model_identity("google/flan-t5-small") == "google/flan-t5-small"  # a Hub id: the id itself
    assert _model_identity(str(tmp_path / "missing")) == str(tmp_path / "missing")
    assert _model_identity(None) is None


# --- _settings: what a resume must match ---


def settings_of(task: str, mode: str, beams: int | None, test_file: str | None = "news.txt", model_name=None):
    trainer = SimpleNamespace(
        scorer=SimpleNamespace(task=task, labels=["bad", "good"]), args=SimpleNamespace(generation_num_beams=beams)
    )
    reader = SimpleNamespace(name="news.txt" if test_file else "financial_phrasebank:test")
    data_args = SimpleNamespace(
        test_file=test_file, source_prefix="sentiment : ", prompt_template="Text: {text}\nLabel:", max_source_length=64
    )
    model_args = SimpleNamespace(model_name_or_path="google/flan-t5-small")
    return _settings(
        trainer, reader, InputSummary(digest="abc"), data_args, SimpleNamespace(predict_mode=mode), model_args,
        model_name,
    )  # fmt: skip


def test_the_settings_a_resume_must_match(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert settings_of("seq2seq", "score", 4) == {
        "input": str(tmp_path / "news.txt"), "input_digest": "abc", "model": "google/flan-t5-small",
        "model_files": None, "base_model": "google/flan-t5-small", "base_model_files": "google/flan-t5-small",
        "task": "seq2seq", "labels": ["bad", "good"], "predict_mode": "score", "num_beams": None,
        "source_prefix": "sentiment : ", "prompt_template": None, "max_source_length": 64,
    }  # fmt: skip
    causal = settings_of("causal", "generate", None, test_file=None, model_name="runs/a")
    assert causal["input"] == "financial_phrasebank:test"  # a Hub dataset: its name, not a path
    assert (causal["model"], causal["model_files"]) == ("runs/a", "runs/a")
    assert causal["num_beams"] == 1  # generate with no --generation_num_beams: one beam
    assert causal["prompt_template"] == "Text: {text}\nLabel:"
    assert settings_of("seq2seq", "generate", 4)["num_beams"] == 4


# --- _resume: the rows kept must follow on from the input ---


def resume(tmp_path: Path, rows: list[Row], total: int):
    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(is_main_process=True, num_processes=1),
        args=SimpleNamespace(output_dir=str(tmp_path)),
    )
    return _resume(trainer, iter(rows), None, SETTINGS, total, overwrite=False)


INPUT = [Row(1, "a", None), Row(2, "", None, error="empty"), Row(3, "b", None), Row(5, "c", None), Row(6, "d", None)]


def test_resume_continues_with_the_rows_after_those_kept(tmp_path):
    (tmp_path / "predictions.jsonl").write_bytes(row(1) + row(3))
    write_state(tmp_path, SETTINGS)
    done, rest = resume(tmp_path, INPUT, 4)
    assert done == 2 and [r.line for r in rest] == [5, 6]  # the bad row 2 is neither kept nor answered


def test_resume_refuses_rows_that_do_not_follow_on_from_the_input(tmp_path):
    (tmp_path / "predictions.jsonl").write_bytes(row(1) + row(5))
    write_state(tmp_path, SETTINGS)
    with pytest.raises(ArgumentError) as error:
        resume(tmp_path, INPUT, 4)
    assert str(error.value) == (
        f"predictions.jsonl in {tmp_path} does not match the input: its row 2 is line 5, the input's is line 3. "
        "Pass --overwrite_predictions to start again."
    )


def test_a_refusal_of_the_main_process_is_raised_and_a_fresh_start_answers_every_good_row(tmp_path):
    (tmp_path / "predictions.jsonl").write_bytes(row(1))
    with pytest.raises(ArgumentError, match="predictions.state.json is missing"):
        resume(tmp_path, INPUT, 4)
    fresh = tmp_path / "fresh"  # the folder is made
    done, rest = resume(fresh, INPUT, 4)
    assert done == 0 and [r.line for r in rest] == [1, 3, 5, 6]
    assert (fresh / "predictions.jsonl").read_bytes() == b""


def test_resume_keeps_to_the_max_predict_samples_cap_and_passes_overwrite_on(tmp_path):
    (tmp_path / "predictions.jsonl").write_bytes(row(1))
    write_state(tmp_path, SETTINGS)
    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(is_main_process=True, num_processes=1),
        args=SimpleNamespace(output_dir=str(tmp_path)),
    )
    done, rest = _resume(trainer, iter(INPUT), 4, SETTINGS, 3, overwrite=False)  # the first 4 input rows only
    assert done == 1 and [r.line for r in rest] == [3, 5]
    other = {**SETTINGS, "source_prefix": "s: "}
    done, rest = _resume(trainer, iter(INPUT), 3, other, 2, overwrite=True)  # other settings, overwritten
    assert done == 0 and [r.line for r in rest] == [1, 3]
    assert (tmp_path / "predictions.jsonl").read_bytes() == b""
