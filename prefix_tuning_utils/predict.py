"""Batch prediction (`--do_predict`): answer a file of any size, in input order, resumably, on any number of processes.

    python run_prefix_tuning.py --model_name_or_path runs/quickstart --test_file news.txt --do_predict \\
        --output_dir runs/news

The input is read twice, both times as a stream: a first pass checks every row (bad rows are reported with their
line numbers before anything is written) and fingerprints the input; the second answers the rows a chunk at a time
(split across processes, gathered on the main process) and appends them to `predictions.jsonl` as they come. A
run that is interrupted (even by `kill -9`) and started again with the same command continues after the last
complete row. Metrics, the confusion matrix and the optional CSV are computed from `predictions.jsonl` at the end,
again as a stream, so memory does not grow with the number of rows.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from .arguments import ArgumentError, DataTrainingArguments, ModelArguments, PredictArguments
from .data import LabelledData
from .metrics import confusion_metrics, normalise_answer, plot_confusion_matrix
from .scoring import LabelScorer


logger = logging.getLogger(__name__)

__all__ = [
    "BAD_ROWS_FILE",
    "CONFUSION_MATRIX_FILE",
    "PREDICTIONS_CSV_FILE",
    "PREDICTIONS_FILE",
    "STATE_FILE",
    "InputReader",
    "InputSummary",
    "Row",
    "answer_rows",
    "predict",
    "save_confusion_matrix",
    "scan_input",
]

PREDICTIONS_FILE = "predictions.jsonl"
PREDICTIONS_CSV_FILE = "predictions.csv"
STATE_FILE = "predictions.state.json"
BAD_ROWS_FILE = "predict_bad_rows.jsonl"
CONFUSION_MATRIX_FILE = "predict_confusion_matrix.png"
NO_LABEL = "(no label)"  # generate mode: an answer that is none of the label words

# A .txt line is `sentence@label` when the text after its last `@` is one word: a letter, then letters, digits,
# `_` or `-` (so `mail@example.com` or `at @ 3 pm` are bare sentences); that word must then be a label word.
TXT_LABEL = re.compile(r"[^\W\d_][\w-]*")
# Control characters other than tab and line breaks: in ISO-8859-1 the bytes 0x80-0x9f decode to them, which in
# practice means the file is UTF-8 or Windows-1252 (curly quotes, dashes, the euro sign), not ISO-8859-1.
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# JSON may escape half of a UTF-16 surrogate pair on its own ("\ud800"): not a character, not writable as UTF-8.
SURROGATE = re.compile("[\ud800-\udfff]")
SHOWN_BAD_ROWS = 20


@dataclass
class Row:
    """One input row: its line number (row number in a .json array, index in a Hub split), text and gold label."""

    line: int
    text: str
    gold: str | None
    error: str | None = None  # why the row is bad; None for a good row


@dataclass
class InputSummary:
    rows: int = 0  # good rows, to be answered
    bad: int = 0
    labelled: int = 0  # good rows with a gold label
    first_bad: list[Row] = field(default_factory=list)
    digest: str = ""


def _gold_label(value, labels: list[str]) -> tuple[str | None, str | None]:
    """(label word, error) for a label cell or field: a label word, a class id, or empty for no label."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None, f"label {value!r} is not a label word or class id"
    if isinstance(value, int) or value.strip().isdigit():
        index = int(value)
        if not 0 <= index < len(labels):
            return None, f"class id {index} is outside 0..{len(labels) - 1} (--label_words {','.join(labels)})"
        return labels[index], None
    word = value.strip()
    if word not in labels:
        return None, f"label {word!r} is not one of {', '.join(labels)}"
    return word, None


class InputReader:
    """The rows of --test_file (.txt, .csv, .jsonl streamed; .json loaded whole) or of an in-memory split.

    Iterating gives every row, good or bad, in input order; blank lines are not rows. Iterating again reads the
    input again from the start.
    """

    def __init__(
        self,
        source: str | LabelledData,
        labels: list[str],
        text_column: str = "sentence",
        label_column: str = "label",
        encoding: str | None = None,
    ):
        self.source, self.labels = source, labels
        self.text_column, self.label_column = text_column, label_column
        if isinstance(source, str):
            self.suffix = source.lower().rsplit(".", 1)[-1]
            self.encoding = encoding or ("iso-8859-1" if self.suffix == "txt" else "utf-8")
        else:
            self.suffix, self.encoding = None, None
        self.utf8_looking_lines = 0  # .txt read as ISO-8859-1: non-ASCII lines that are valid UTF-8

    @property
    def name(self) -> str:
        return self.source if isinstance(self.source, str) else self.source.source

    def __iter__(self) -> Iterator[Row]:
        if isinstance(self.source, LabelledData):
            for text, label, line in zip(self.source.texts, self.source.labels, self.source.lines):
                gold, error = _gold_label(label, self.labels)
                yield Row(line, text.strip(), gold, error or (None if text.strip() else "empty text"))
        elif self.suffix == "txt":
            yield from self._txt_rows()
        elif self.suffix == "csv":
            yield from self._csv_rows()
        elif self.suffix == "jsonl":
            yield from self._jsonl_rows()
        else:
            yield from self._json_rows()

    def _decode(self, raw: bytes, number: int) -> tuple[str, str | None]:
        if number == 1 and codecs.lookup(self.encoding).name == "utf-8":
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            return raw.decode(self.encoding), None
        except UnicodeDecodeError as err:
            return raw.decode(self.encoding, "replace"), f"bytes that are not {self.encoding} ({err.reason})"

    def _txt_rows(self) -> Iterator[Row]:
        latin1 = codecs.lookup(self.encoding).name == "iso8859-1"
        with open(self.source, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                line, error = self._decode(raw, number)
                line = line.strip()
                if not line:
                    continue
                if latin1 and not raw.isascii() and _is_utf8(raw):
                    self.utf8_looking_lines += 1
                sentence, sep, tail = line.rpartition("@")
                text, gold = line, None
                if sep and TXT_LABEL.fullmatch(tail.strip()):
                    text, tail = sentence.strip(), tail.strip()
                    gold, label_error = _gold_label(tail, self.labels)
                    if label_error is not None:
                        label_error += " (a .txt line whose text after the last `@` is one word is `sentence@label`)"
                    error = error or label_error
                    if not text:
                        error = error or "empty text before the `@`"
                if error is None and CONTROL.search(text):
                    error = (
                        f"control characters, which {self.encoding} text does not hold: is the file in another "
                        "encoding (UTF-8, Windows-1252)? Pass --test_file_encoding."
                    )
                yield Row(number, text, gold, error)

    def _object_row(self, number: int, item, error: str | None = None) -> Row:
        if error is not None:
            return Row(number, "", None, error)
        if not isinstance(item, dict):
            return Row(number, "", None, f"expected an object with {self.text_column!r}, got {type(item).__name__}")
        if self.text_column not in item:
            found = ", ".join(map(str, item)) or "nothing"
            return Row(number, "", None, f"no field {self.text_column!r} (found: {found}); set --text_column")
        value = item[self.text_column]
        text = ("" if value is None else str(value)).strip()
        gold, error = _gold_label(item.get(self.label_column), self.labels)
        if not text:
            error = f"empty text in {self.text_column!r}"
        elif error is None and CONTROL.search(text):
            error = "control characters in the text"
        elif error is None and SURROGATE.search(text):
            error = "a lone UTF-16 surrogate escape (\\ud800-\\udfff) in the text, which is no character"
        return Row(number, text, gold, error)

    def _jsonl_rows(self) -> Iterator[Row]:
        with open(self.source, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                line, error = self._decode(raw, number)
                if not line.strip():
                    continue
                item = None
                if error is None:
                    try:
                        item = json.loads(line)
                    except json.JSONDecodeError as err:
                        error = f"malformed JSON ({err.msg})"
                yield self._object_row(number, item, error)

    def _json_rows(self) -> Iterator[Row]:
        # A JSON array cannot be streamed without a streaming parser: it is loaded whole. Use .jsonl for big inputs.
        with open(self.source, "rb") as handle:
            raw = handle.read()
        try:
            loaded = json.loads(raw.decode(self.encoding).removeprefix("\ufeff"))
        except UnicodeDecodeError as err:
            line = raw[: err.start].count(b"\n") + 1
            raise ArgumentError(f"{self.source}:{line}: bytes that are not {self.encoding}.") from None
        except json.JSONDecodeError as err:
            raise ArgumentError(f"{self.source}:{err.lineno}: malformed JSON ({err.msg}).") from None
        if isinstance(loaded, dict) and "data" in loaded:
            loaded = loaded["data"]
        if not isinstance(loaded, list):
            raise ArgumentError(f'{self.source}: expected a JSON list of objects (or {{"data": [...]}}).')
        for number, item in enumerate(loaded, start=1):
            yield self._object_row(number, item)

    def _csv_rows(self) -> Iterator[Row]:
        undecodable: set[int] = set()
        with open(self.source, "rb") as handle:

            def lines() -> Iterator[str]:
                for number, raw in enumerate(handle, start=1):
                    line, error = self._decode(raw, number)
                    if error is not None:
                        undecodable.add(number)
                    yield line

            reader = csv.reader(lines())
            try:
                header = next(reader, None)
                if header is None:
                    raise ArgumentError(f"{self.source} is empty.")
                header = [name.strip() for name in header]
                if self.text_column not in header:
                    raise ArgumentError(
                        f"{self.source}:1: no column {self.text_column!r} (found: {', '.join(header)}); "
                        "set --text_column."
                    )
                text_index = header.index(self.text_column)
                label_index = header.index(self.label_column) if self.label_column in header else None
                end = reader.line_num
                for record in reader:
                    start, end = end + 1, reader.line_num
                    if not any(cell.strip() for cell in record):
                        continue
                    bad_bytes = any(number in undecodable for number in range(start, end + 1))
                    undecodable.clear()  # csv.reader reads no further than the end of the record
                    text = record[text_index].strip() if text_index < len(record) else ""
                    label = record[label_index] if label_index is not None and label_index < len(record) else None
                    gold, error = _gold_label(label, self.labels)
                    if bad_bytes:
                        error = f"bytes that are not {self.encoding}"
                    elif not text:
                        error = f"empty text in column {self.text_column!r}"
                    elif error is None and CONTROL.search(text):
                        error = "control characters in the text"
                    yield Row(start, text, gold, error)
            except csv.Error as err:
                raise ArgumentError(f"{self.source}:{reader.line_num}: malformed CSV ({err}).") from None


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
    """The output rows of one batch: predicted label and per-label probabilities (score) or the answer (generate)."""
    texts = [row.text for row in rows]
    out = []
    if mode == "score":
        probabilities = scorer.probabilities(texts)
        for row, probs, best in zip(rows, probabilities.tolist(), probabilities.argmax(dim=1).tolist()):
            out.append(
                {
                    "line": row.line,
                    "text": row.text,
                    "label": scorer.labels[best],
                    "probabilities": dict(zip(scorer.labels, probs)),
                    "gold": row.gold,
                }
            )
        return out
    words = {normalise_answer(label): label for label in scorer.labels}
    for row, answer in zip(rows, scorer.generate(texts, num_beams=num_beams)):
        out.append(
            {
                "line": row.line,
                "text": row.text,
                "label": words.get(normalise_answer(answer)),
                "answer": answer,
                "gold": row.gold,
            }
        )
    return out


# --- the output folder: predictions.jsonl, its state file, resuming ---


def _complete_rows(path: str) -> tuple[int, int, bytes | None]:
    """(complete lines, byte length of the complete part, last complete line) of a file that may end mid-line."""
    count, end, block_size = 0, 0, 1 << 20
    last = None
    with open(path, "rb") as handle:
        offset = 0
        while block := handle.read(block_size):
            count += block.count(b"\n")
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = offset + newline + 1
            offset += len(block)
        if end:
            handle.seek(max(0, end - block_size))
            tail = handle.read(end - max(0, end - block_size))
            last = tail[:-1].rsplit(b"\n", 1)[-1]
    return count, end, last


def _write_json(path: str, value) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


MODEL_CONFIG_FILES = ("config.json", "adapter_config.json", "prefix_tuning.json")


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
            or (entry.name.endswith(".bin") and entry.name != "training_args.bin")
        )
    )


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
            old = state.get("settings") or {}
            changed = sorted(key for key in set(old) | set(settings) if old.get(key) != settings.get(key))
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


def _finish(output_dir: str, labels: list[str], mode: str, write_csv: bool) -> dict:
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
    from accelerate.utils import broadcast_object_list, gather_object
    from tqdm.auto import tqdm

    args, accelerator, scorer = trainer.args, trainer.accelerator, trainer.scorer
    scorer.model = accelerator.unwrap_model(trainer.model)
    main = accelerator.is_main_process
    output_dir = args.output_dir
    reader = InputReader(
        data_args.test_file if data_args.test_file is not None else test_data,
        scorer.labels,
        data_args.text_column,
        data_args.label_column,
        predict_args.test_file_encoding,
    )
    limit = data_args.max_predict_samples
    skip = predict_args.on_bad_row == "skip"
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
    if reader.utf8_looking_lines and main:
        logger.warning(
            "%s: %d line(s) with non-ASCII characters are valid UTF-8 but are read as %s (.txt default, as Financial "
            "PhraseBank); if the file is UTF-8, pass --test_file_encoding utf-8.",
            reader.name, reader.utf8_looking_lines, reader.encoding,
        )  # fmt: skip
    if summary.bad:
        if not skip:
            raise ArgumentError(
                _describe_bad_rows(reader, summary) + "\nNothing was written. Fix them, or pass --on_bad_row skip "
                "to leave them out."
            )
        logger.warning("%s\nThey are skipped (listed in %s).", _describe_bad_rows(reader, summary), bad_rows_path)
    elif main and os.path.isfile(bad_rows_path):
        os.remove(bad_rows_path)

    num_beams = args.generation_num_beams or 1
    settings = {
        "input": os.path.abspath(reader.name) if data_args.test_file is not None else reader.name,
        "input_digest": summary.digest,
        "model": model_name or model_args.model_name_or_path,
        "model_files": _model_identity(model_name),
        "base_model": model_args.model_name_or_path,
        "base_model_files": _model_identity(model_args.model_name_or_path),
        "task": scorer.task,
        "labels": scorer.labels,
        "predict_mode": predict_args.predict_mode,
        "num_beams": num_beams if predict_args.predict_mode == "generate" else None,
        "source_prefix": data_args.source_prefix,
        "prompt_template": data_args.prompt_template if scorer.task == "causal" else None,
        "max_source_length": data_args.max_source_length,
    }
    # A model trained in this very run is new: its predictions start afresh.
    overwrite = predict_args.overwrite_predictions or args.do_train
    decision = [None]
    if main:
        os.makedirs(output_dir, exist_ok=True)
        try:
            decision = [_start_or_resume(output_dir, settings, summary.rows, overwrite)]
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

    chunk_size, batch_size = predict_args.predict_chunk_size, args.per_device_eval_batch_size
    progress = tqdm(
        total=summary.rows, initial=done, unit="rows", desc="Predicting", disable=not main or args.disable_tqdm
    )
    started, answered = time.perf_counter(), 0
    handle = open(os.path.join(output_dir, PREDICTIONS_FILE), "a", encoding="utf-8") if main else None
    try:
        # Chunks start at multiples of the chunk size, so a resumed run forms the same batches from there on.
        first = chunk_size - done % chunk_size if done % chunk_size else chunk_size
        sizes = itertools.chain([first], itertools.repeat(chunk_size))
        for size in sizes:
            chunk = list(itertools.islice(good_rows, size))
            if not chunk:
                break
            # Batches of similar lengths waste less padding; they depend on the chunk only, not on the processes.
            order = sorted(range(len(chunk)), key=lambda i: len(chunk[i].text))
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            with accelerator.split_between_processes(batches) as mine:
                answers = [
                    (index, out)
                    for batch in mine
                    for index, out in zip(
                        batch, answer_rows(scorer, [chunk[i] for i in batch], predict_args.predict_mode, num_beams)
                    )
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
    elapsed = time.perf_counter() - started
    accelerator.wait_for_everyone()
    if not main:
        return {}
    _write_json(os.path.join(output_dir, STATE_FILE), {"settings": settings, "rows": summary.rows, "complete": True})
    logger.info(
        "Answered %d rows in %.1f s (%.1f rows/s) on %d process(es); %d were already done.",
        answered, elapsed, answered / elapsed if elapsed else 0.0, accelerator.num_processes, done,
    )  # fmt: skip
    metrics = _finish(output_dir, scorer.labels, predict_args.predict_mode, predict_args.predictions_csv)
    metrics.update({"bad_rows_skipped": summary.bad, "mode": predict_args.predict_mode})
    if answered:
        metrics["rows_per_second"] = answered / elapsed
    return {f"predict_{key}": value for key, value in metrics.items()}
