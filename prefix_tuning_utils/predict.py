"""Batch prediction (`--do_predict`): answer a file of any size, in input order, resumably, on any number of processes.

    python run_prefix_tuning.py --model_name_or_path runs/quickstart --test_file news.txt --do_predict \\
        --output_dir runs/news

`predict()` runs four steps, each a function below, reading the input (through `readers.InputReader`, which has
already checked its encoding in chunks) as a stream each time:

1. `_scan`: check every row (bad rows are reported with their line numbers before anything is written) and
   fingerprint the input;
2. `_resume`: start `predictions.jsonl` afresh, or continue it after its last complete row when it was made from
   the same input and settings (a run interrupted even by `kill -9` and started again with the same command);
3. `_answer`: answer the rows a chunk at a time (split across processes, gathered on the main process) and append
   them to `predictions.jsonl` as they come;
4. `_finish`: compute the metrics, the confusion matrix and the optional CSV from `predictions.jsonl`, again as a
   stream, so memory does not grow with the number of rows.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from .answering import Answerer, LabelScorer
from .arguments import DataTrainingArguments, ModelArguments, PredictArguments
from .errors import ArgumentError
from .metrics import confusion_metrics, plot_confusion_matrix
from .readers import InputReader, LabelledData, Row
from .run_files import (
    ADAPTER_CONFIG_FILE,
    BAD_ROWS_FILE,
    MODEL_CONFIG_FILE,
    NO_LABEL,
    PREDICTIONS_CSV_FILE,
    PREDICTIONS_FILE,
    TASK_SETTINGS_FILE,
    TRAINING_ARGS_FILE,
)
from .run_files import PREDICT_CONFUSION_PNG as CONFUSION_MATRIX_FILE
from .run_files import PREDICTIONS_STATE_FILE as STATE_FILE


logger = logging.getLogger(__name__)

__all__ = [
    "BAD_ROWS_FILE",
    "CONFUSION_MATRIX_FILE",
    "PREDICTIONS_CSV_FILE",
    "PREDICTIONS_FILE",
    "STATE_FILE",
    "InputSummary",
    "answer_rows",
    "changed_settings",
    "count_complete_rows",
    "predict",
    "save_confusion_matrix",
    "scan_input",
]

SHOWN_BAD_ROWS = 20


@dataclass
class InputSummary:
    rows: int = 0  # good rows, to be answered
    bad: int = 0
    labelled: int = 0  # good rows with a gold label
    first_bad: list[Row] = field(default_factory=list)
    digest: str = ""


def scan_input(reader: InputReader, limit: int | None = None, bad_rows_path: str | None = None) -> InputSummary:
    """First pass: count good and bad rows (the first `limit` rows only), fingerprint them, list the bad ones.

    With `bad_rows_path`, every bad row is written there (jsonl: line, error), so nothing bad is held in memory.
    """
    summary = InputSummary()
    digest = hashlib.sha256()
    bad_file = open(bad_rows_path, "w", encoding="utf-8") if bad_rows_path else None
    try:
        for row in itertools.islice(reader, limit):
            digest.update(json.dumps([row.line, row.text, row.gold, row.error], ensure_ascii=False).encode())
            digest.update(b"\n")
            if row.error is None:
                summary.rows += 1
                summary.labelled += row.gold is not None
                continue
            summary.bad += 1
            if len(summary.first_bad) < SHOWN_BAD_ROWS:
                summary.first_bad.append(row)
            if bad_file is not None:
                bad_file.write(json.dumps({"line": row.line, "error": row.error}, ensure_ascii=False) + "\n")
    finally:
        if bad_file is not None:
            bad_file.close()
    summary.digest = digest.hexdigest()
    return summary


def _describe_bad_rows(reader: InputReader, summary: InputSummary) -> str:
    shown = "\n".join(f"  {reader.name}:{row.line}: {row.error}" for row in summary.first_bad)
    more = f"\n  ... and {summary.bad - len(summary.first_bad)} more" if summary.bad > len(summary.first_bad) else ""
    return f"{summary.bad} bad row(s) in {reader.name}:\n{shown}{more}"


def answer_rows(scorer: LabelScorer, rows: list[Row], mode: str, num_beams: int = 1) -> list[dict]:
    """The output rows of one batch, answered by the `Answerer` (the API's own path): the predicted label and
    every label's probability (score), or the label and the answer the model wrote (generate)."""
    answered = Answerer(scorer, mode, num_beams).answer_batch([row.text for row in rows], with_scores=False)
    out = []
    for row, ranked in zip(rows, answered):
        best = ranked[0]
        if mode == "score":
            scores = {item["label"]: item["score"] for item in ranked}
            result = {"label": best["label"], "probabilities": {label: scores[label] for label in scorer.labels}}
        else:
            result = {"label": best["label"], "answer": best["answer"]}
        out.append({"line": row.line, "text": row.text, **result, "gold": row.gold})
    return out


# --- the output folder: predictions.jsonl, its state file, resuming ---


def _complete_rows(path: str) -> tuple[int, int, bytes | None]:
    """(complete lines, byte length of the complete part, last complete line) of a file that may end mid-line.

    Read in blocks of 1 MiB; the last complete line is read whole, however long (a row of a 2 MiB sentence too)."""
    count, start, end, block_size = 0, 0, 0, 1 << 20
    last = None
    with open(path, "rb") as handle:
        offset = 0
        while block := handle.read(block_size):
            count += block.count(b"\n")
            newline = block.rfind(b"\n")
            if newline >= 0:
                previous = block.rfind(b"\n", 0, newline)  # else the line began where the complete part ended
                start = offset + previous + 1 if previous >= 0 else end
                end = offset + newline + 1
            offset += len(block)
        if end:
            handle.seek(start)
            last = handle.read(end - 1 - start)
    return count, end, last


def count_complete_rows(path: str) -> int:
    """The rows of predictions.jsonl that were written completely (a run killed mid-write may leave half a line)."""
    return _complete_rows(path)[0]


def _write_json(path: str, value) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


MODEL_CONFIG_FILES = (MODEL_CONFIG_FILE, ADAPTER_CONFIG_FILE, TASK_SETTINGS_FILE)


def _model_identity(path: str | None) -> list | str | None:
    """What changes when a local model is retrained in place: names, sizes and times of its weight and config files
    (not of other files, so --output_dir may be the model's own folder); the id of a Hub model."""
    if path is None or not os.path.isdir(path):
        return path
    return sorted(
        [entry.name, entry.stat().st_size, entry.stat().st_mtime_ns]
        for entry in os.scandir(path)
        if entry.is_file()
        and (
            entry.name in MODEL_CONFIG_FILES
            or entry.name.endswith((".safetensors", ".safetensors.index.json", ".gguf", ".bin.index.json"))
            or (entry.name.endswith(".bin") and entry.name != TRAINING_ARGS_FILE)
        )
    )


# A setting that follows from another: when its cause changed too, only the cause is named (the user changed that).
# Score mode records no beams, so --predict_mode generate alone also changes num_beams; a new input path a new digest.
DERIVED_SETTINGS = {
    "num_beams": ("predict_mode",),
    "input_digest": ("input",),
    "model_files": ("model",),
    "base_model": ("model",),
    "base_model_files": ("base_model", "model"),
    "task": ("model",),
    "labels": ("model",),
    "prompt_template": ("task", "model"),
}


def changed_settings(old: dict, new: dict) -> list[str]:
    """The settings that differ between two runs' predictions, without those that only follow from another."""
    changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
    return [key for key in changed if not set(DERIVED_SETTINGS.get(key, ())) & set(changed)] or changed


def _start_or_resume(output_dir: str, settings: dict, total: int, overwrite: bool) -> tuple[int, int | None]:
    """Main process: make `predictions.jsonl` ready to append to. Returns (rows already done, line of the last).

    Resumes when the state file says the file was made from the same input with the same settings; truncates a
    partial last line (the run was killed mid-write). Refuses a folder holding other predictions unless
    `overwrite`.
    """
    predictions = os.path.join(output_dir, PREDICTIONS_FILE)
    state_path = os.path.join(output_dir, STATE_FILE)
    state = None
    if os.path.isfile(state_path):
        with open(state_path, encoding="utf-8") as handle:
            state = json.load(handle)
    if os.path.isfile(predictions) and not overwrite:
        if state is None:
            raise ArgumentError(
                f"{predictions} exists but was not written by this run ({STATE_FILE} is missing); pass "
                "--overwrite_predictions to replace it, or choose another --output_dir."
            )
        if state.get("settings") != settings:
            changed = changed_settings(state.get("settings") or {}, settings)
            raise ArgumentError(
                f"{predictions} holds predictions made from another input or with other settings "
                f"(changed: {', '.join(changed)}); pass --overwrite_predictions to start again, or choose another "
                "--output_dir."
            )
        done, end, last = _complete_rows(predictions)
        if done > total:
            raise ArgumentError(
                f"{predictions} has {done} rows but the input has only {total}; pass --overwrite_predictions."
            )
        if os.path.getsize(predictions) != end:
            with open(predictions, "r+b") as handle:
                handle.truncate(end)
            logger.warning("%s ended with a partial row (interrupted mid-write); it was removed.", predictions)
        last_line = json.loads(last)["line"] if last else None
        if done:
            logger.info("Resuming: %s already holds %d of %d rows.", predictions, done, total)
        return done, last_line
    for name in (PREDICTIONS_FILE, PREDICTIONS_CSV_FILE, CONFUSION_MATRIX_FILE):
        if os.path.isfile(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))
    _write_json(state_path, {"settings": settings, "rows": total, "complete": False})
    open(predictions, "wb").close()
    return 0, None


def _summarise_predictions(output_dir: str, labels: list[str], mode: str, write_csv: bool) -> dict:
    """Read predictions.jsonl once: metrics and confusion matrix over the rows with a gold label, and the CSV."""
    columns = ["line", "text", "label", "gold"] + (
        [f"p_{label}" for label in labels] if mode == "score" else ["answer"]
    )
    confusion = {gold: {predicted: 0 for predicted in labels + [None]} for gold in labels}
    rows = 0
    csv_handle = (
        open(os.path.join(output_dir, PREDICTIONS_CSV_FILE), "w", encoding="utf-8", newline="") if write_csv else None
    )
    try:
        writer = csv.writer(csv_handle) if csv_handle else None
        if writer:
            writer.writerow(columns)
        with open(os.path.join(output_dir, PREDICTIONS_FILE), encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                rows += 1
                if row["gold"] is not None:
                    confusion[row["gold"]][row["label"]] += 1
                if writer:
                    values = [row["line"], row["text"], row["label"], row["gold"]]
                    if mode == "score":
                        values += [row["probabilities"][label] for label in labels]
                    else:
                        values.append(row["answer"])
                    writer.writerow(["" if value is None else value for value in values])
    finally:
        if csv_handle:
            csv_handle.close()
    metrics: dict = {"rows": rows}
    labelled = sum(sum(counts.values()) for counts in confusion.values())
    metrics["labelled_rows"] = labelled
    if labelled:
        scores = confusion_metrics(confusion, labels)
        scores.pop("samples")
        if mode == "score":
            scores.pop("invalid_rate")
        metrics.update(scores)
        metrics["confusion_matrix"] = {
            gold: {(NO_LABEL if predicted is None else predicted): n for predicted, n in counts.items()
                   if predicted is not None or mode == "generate"}
            for gold, counts in confusion.items()
        }  # fmt: skip
        save_confusion_matrix(metrics["confusion_matrix"], os.path.join(output_dir, CONFUSION_MATRIX_FILE))
    return metrics


def save_confusion_matrix(confusion: dict[str, dict[str, int]], path: str) -> None:
    """A PNG of the confusion matrix: gold labels as rows, predictions as columns, counts in the cells."""
    gold, predicted = list(confusion), list(next(iter(confusion.values())))
    counts = [[confusion[g][p] for p in predicted] for g in gold]
    title = f"Confusion matrix ({sum(map(sum, counts))} labelled rows)"
    plot_confusion_matrix(counts, gold, predicted, path, title)


def predict(
    trainer,
    data_args: DataTrainingArguments,
    predict_args: PredictArguments,
    model_args: ModelArguments,
    test_data: LabelledData | None = None,
    model_name: str | None = None,
) -> dict:
    """Answer --test_file (or `test_data`) into `<output_dir>/predictions.jsonl`; return the metrics (main process).

    `trainer` supplies the model, the label scorer, the processes (`trainer.accelerator`) and the batch size;
    `model_name` is --model_name_or_path as given (an adapter), `model_args` the model whose weights were loaded.
    """
    scorer = trainer.scorer
    scorer.model = trainer.accelerator.unwrap_model(trainer.model)
    reader = InputReader(
        data_args.test_file if data_args.test_file is not None else test_data,
        scorer.labels,
        data_args.text_column,
        data_args.label_column,
        data_args.file_encoding,
    )
    limit = data_args.max_predict_samples
    summary = _scan(trainer, reader, limit, predict_args.on_bad_row)
    settings = _settings(trainer, reader, summary, data_args, predict_args, model_args, model_name)
    # A model trained in this very run is new: its predictions start afresh.
    overwrite = predict_args.overwrite_predictions or trainer.args.do_train
    done, rows = _resume(trainer, reader, limit, settings, summary.rows, overwrite)
    answered, elapsed = _answer(trainer, rows, done, summary.rows, predict_args)
    return _finish(trainer, settings, summary, answered, elapsed, done, predict_args)


def _scan(trainer, reader: InputReader, limit: int | None, on_bad_row: str) -> InputSummary:
    """Step 1: read every row before anything is written. Bad rows stop the run (--on_bad_row error), or are
    listed in predict_bad_rows.jsonl and left out (skip)."""
    main, output_dir = trainer.accelerator.is_main_process, trainer.args.output_dir
    skip = on_bad_row == "skip"
    bad_rows_path = os.path.join(output_dir, BAD_ROWS_FILE)
    if main and skip:
        os.makedirs(output_dir, exist_ok=True)
    summary = scan_input(reader, limit, bad_rows_path if skip and main else None)
    logger.info(
        "%s: %d rows to answer (%d with a gold label), %d bad.",
        reader.name,
        summary.rows,
        summary.labelled,
        summary.bad,
    )
    if summary.bad:
        if not skip:
            raise ArgumentError(
                _describe_bad_rows(reader, summary) + "\nNothing was written. Fix them, or pass --on_bad_row skip "
                "to leave them out."
            )
        logger.warning("%s\nThey are skipped (listed in %s).", _describe_bad_rows(reader, summary), bad_rows_path)
    elif main and os.path.isfile(bad_rows_path):
        os.remove(bad_rows_path)
    return summary


def _settings(trainer, reader: InputReader, summary: InputSummary, data_args, predict_args, model_args, model_name):
    """What the predictions are made from: a run resumes only predictions.jsonl made from the same."""
    scorer, generate = trainer.scorer, predict_args.predict_mode == "generate"
    return {
        "input": os.path.abspath(reader.name) if data_args.test_file is not None else reader.name,
        "input_digest": summary.digest,
        "model": model_name or model_args.model_name_or_path,
        "model_files": _model_identity(model_name),
        "base_model": model_args.model_name_or_path,
        "base_model_files": _model_identity(model_args.model_name_or_path),
        "task": scorer.task,
        "labels": scorer.labels,
        "predict_mode": predict_args.predict_mode,
        "num_beams": (trainer.args.generation_num_beams or 1) if generate else None,
        "source_prefix": data_args.source_prefix,
        "prompt_template": data_args.prompt_template if scorer.task == "causal" else None,
        "max_source_length": data_args.max_source_length,
    }


def _resume(
    trainer, reader: InputReader, limit: int | None, settings: dict, total: int, overwrite: bool
) -> tuple[int, Iterator[Row]]:
    """Step 2: start predictions.jsonl afresh or continue it (decided on the main process, told to the others).
    Returns the rows already answered and the good rows still to answer, checked to follow on from the file."""
    from accelerate.utils import broadcast_object_list

    accelerator, output_dir = trainer.accelerator, trainer.args.output_dir
    decision = [None]
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        try:
            decision = [_start_or_resume(output_dir, settings, total, overwrite)]
        except ArgumentError as err:
            decision = [err]
    if accelerator.num_processes > 1:
        broadcast_object_list(decision)
    if isinstance(decision[0], ArgumentError):
        raise decision[0]
    done, last_line = decision[0]
    good_rows = (row for row in itertools.islice(reader, limit) if row.error is None)
    for index, row in enumerate(itertools.islice(good_rows, done)):
        if index == done - 1 and row.line != last_line:
            raise ArgumentError(
                f"{PREDICTIONS_FILE} in {output_dir} does not match the input: its row {done} is line {last_line}, "
                f"the input's is line {row.line}. Pass --overwrite_predictions to start again."
            )
    return done, good_rows


def _answer(trainer, rows: Iterator[Row], done: int, total: int, predict_args: PredictArguments) -> tuple[int, float]:
    """Step 3: answer the rows a chunk at a time, split across the processes, and append them (main process) to
    predictions.jsonl in input order. Returns the rows answered and the seconds it took."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    args, accelerator, scorer = trainer.args, trainer.accelerator, trainer.scorer
    main, mode, num_beams = accelerator.is_main_process, predict_args.predict_mode, args.generation_num_beams or 1
    chunk_size, batch_size = predict_args.predict_chunk_size, args.per_device_eval_batch_size
    progress = tqdm(total=total, initial=done, unit="rows", desc="Predicting", disable=not main or args.disable_tqdm)
    started, answered = time.perf_counter(), 0
    handle = open(os.path.join(args.output_dir, PREDICTIONS_FILE), "a", encoding="utf-8") if main else None
    try:
        # Chunks start at multiples of the chunk size, so a resumed run forms the same batches from there on.
        first = chunk_size - done % chunk_size if done % chunk_size else chunk_size
        for size in itertools.chain([first], itertools.repeat(chunk_size)):
            chunk = list(itertools.islice(rows, size))
            if not chunk:
                break
            # Batches of similar lengths waste less padding; they depend on the chunk only, not on the processes.
            order = sorted(range(len(chunk)), key=lambda i: len(chunk[i].text))
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            # Under --bf16 as the model was trained or loaded: in bf16, the scores summed in fp32 (precision.py).
            with accelerator.split_between_processes(batches) as mine, accelerator.autocast():
                answers = [
                    (index, out)
                    for batch in mine
                    for index, out in zip(batch, answer_rows(scorer, [chunk[i] for i in batch], mode, num_beams))
                ]
            if accelerator.num_processes > 1:
                answers = gather_object(answers)
            if main:
                answers.sort(key=lambda pair: pair[0])
                handle.write("".join(json.dumps(out, ensure_ascii=False) + "\n" for _, out in answers))
                handle.flush()
            answered += len(chunk)
            progress.update(len(chunk))
    finally:
        progress.close()
        if handle is not None:
            handle.close()
    return answered, time.perf_counter() - started


def _finish(
    trainer, settings: dict, summary: InputSummary, answered: int, elapsed: float, done: int, predict_args
) -> dict:
    """Step 4 (main process): mark predictions.jsonl complete and compute the metrics, confusion matrix and CSV from
    it. Other processes return {}."""
    accelerator, output_dir = trainer.accelerator, trainer.args.output_dir
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return {}
    _write_json(os.path.join(output_dir, STATE_FILE), {"settings": settings, "rows": summary.rows, "complete": True})
    logger.info(
        "Answered %d rows in %.1f s (%.1f rows/s) on %d process(es); %d were already done.",
        answered, elapsed, answered / elapsed if elapsed else 0.0, accelerator.num_processes, done,
    )  # fmt: skip
    metrics = _summarise_predictions(
        output_dir, trainer.scorer.labels, predict_args.predict_mode, predict_args.predictions_csv
    )
    metrics.update({"bad_rows_skipped": summary.bad, "mode": predict_args.predict_mode})
    if answered:
        metrics["rows_per_second"] = answered / elapsed
    return {f"predict_{key}": value for key, value in metrics.items()}
