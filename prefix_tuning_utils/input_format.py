"""How a sentence becomes model input, and which tokens answer: the one place both are written down.

Training (``preprocessing``), evaluation, ``--do_predict``, the Python API and the server all format text through
:class:`InputFormat`, a small typed object owned by the library: the command line converts its arguments into it
(:meth:`InputFormat.from_args`), a trained model's ``prefix_tuning.json`` gives it back
(:meth:`InputFormat.from_settings`). No torch here.

* seq2seq (T5): the input is ``source_prefix + text``; the answer is the label word (T5's tokenizer adds the
  end-of-sequence token).
* causal (decoder-only): the input is ``prompt_template`` with ``{text}`` replaced; the answer is a space, the label
  word and the end-of-sequence token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal


__all__ = ["DEFAULT_PROMPT_TEMPLATE", "SAVED_FIELDS", "InputFormat", "Task", "answer_token_ids"]

Task = Literal["seq2seq", "causal"]
DEFAULT_PROMPT_TEMPLATE = "Sentence: {text}\nSentiment:"
DEFAULT_MAX_SOURCE_LENGTH = 256
DEFAULT_MAX_TARGET_LENGTH = 8
# What `prefix_tuning.json` records of the format (the task is recorded beside them).
SAVED_FIELDS = ("source_prefix", "prompt_template", "max_source_length", "max_target_length")


@dataclass(frozen=True)
class InputFormat:
    """The task and the text around each sentence: what answering needs of the data arguments."""

    task: Task = "seq2seq"
    source_prefix: str = ""
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    max_source_length: int = DEFAULT_MAX_SOURCE_LENGTH
    max_target_length: int = DEFAULT_MAX_TARGET_LENGTH

    def __post_init__(self):
        if self.task not in ("seq2seq", "causal"):
            raise ValueError(f"task must be 'seq2seq' or 'causal', got {self.task!r}.")
        if "{text}" not in self.prompt_template:
            raise ValueError(f"prompt_template must contain {{text}}, got {self.prompt_template!r}.")

    @classmethod
    def from_args(cls, args, task: Task) -> InputFormat:
        """From any object with the saved fields as attributes (the CLI's `DataTrainingArguments`)."""
        return cls(task, **{name: getattr(args, name) for name in SAVED_FIELDS})

    @classmethod
    def from_settings(cls, settings: dict, task: Task | None = None) -> InputFormat:
        """From `prefix_tuning.json`; a field it lacks (an older file) takes the default."""
        defaults = {field.name: field.default for field in dataclasses.fields(cls)}
        values = {name: settings.get(name, defaults[name]) for name in SAVED_FIELDS}
        return cls(task or settings.get("task") or defaults["task"], **values)

    def settings(self) -> dict:
        """The saved fields, as `prefix_tuning.json` records them."""
        return {name: getattr(self, name) for name in SAVED_FIELDS}

    def source(self, text: str) -> str:
        """The model input for one sentence."""
        if self.task == "seq2seq":
            return self.source_prefix + text
        return self.prompt_template.replace("{text}", text)


def answer_token_ids(tokenizer, labels: list[str], task: Task) -> list[list[int]]:
    """Token ids of the answer the model is taught to write for each label, end-of-sequence included."""
    if task == "seq2seq":
        return [list(ids) for ids in tokenizer(text_target=list(labels))["input_ids"]]
    ids = tokenizer([" " + label for label in labels], add_special_tokens=False)["input_ids"]
    return [list(seq) + [tokenizer.eos_token_id] for seq in ids]
