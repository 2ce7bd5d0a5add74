"""Using a trained adapter from Python: `PrefixClassifier`, shaped like transformers' text-classification pipeline.

    >>> from prefix_tuning_utils.classifier import PrefixClassifier
    >>> classify = PrefixClassifier.from_pretrained("/tmp/qs")  # the quickstart recipe's --output_dir, or a Hub id
    >>> classify("Borealis Bank said its net sales rose 25 percent from a year earlier .")  # the quickstart's answer
    [{'label': 'negative', 'score': 0.5597614645957947}]
    >>> classify(["...", "..."], top_k=None)  # every label of every sentence, best first

`from_pretrained` takes anything `run_prefix_tuning.py` wrote (an adapter of any --tuning_method, --prefix_scope
all, or a fully fine-tuned model; seq2seq or decoder-only) and finds its base model, label words and input format
through :func:`modeling.find_trained_model`, exactly as `--do_eval` / `--do_predict` without `--do_train` do. The
answers come from :class:`scoring.LabelScorer`, the code evaluation and `--do_predict` use, so the API, the
prediction files and the evaluation metrics are one answering path.

Two modes, as `--predict_mode`:

* ``mode="score"`` (rank classification, the default): every label word is scored; ``score`` is its probability,
  the softmax of the summed log-probabilities of the label's tokens over the label set. Every input gets a label,
  and the scores of all labels sum to 1 (``top_k=None`` lists them, best first).
* ``mode="generate"``: the model writes its answer (greedy, or beam search with ``num_beams``). ``label`` is the
  label word it wrote (compared after lower-casing and collapsing spaces, as `--do_predict` does) or ``None`` when
  it wrote something else; ``answer`` holds the text it wrote. ``score`` is the probability the model gives to
  writing exactly that label word and stopping (the product of its token probabilities, not normalised over the
  labels); for an answer that is no label word it is the probability of writing none of them, one minus the sum
  over the labels. Computing it costs one extra forward pass per label word. ``top_k`` must be 1 in this mode: the
  model wrote one answer.

Not registered as a transformers custom pipeline (``PIPELINE_REGISTRY``): ``pipeline(task, model=...)`` loads one
model class per task from the path, while an adapter here needs its base model found from its config (seq2seq or
decoder-only, falling back to the run's own ``base_model/``), its ``prefix_tuning.json`` and, for
``--prefix_scope all``, this package's loading hooks; and a pipeline's preprocess / forward / postprocess split runs
one forward per batch, while rank classification runs one per label word over text the scorer itself formats. A
pipeline subclass would have to bypass both halves, which would make it a second answering path in disguise.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import torch

from .arguments import DataTrainingArguments, ModelArguments
from .errors import ArgumentError
from .metrics import normalise_answer
from .modeling import FP16_UNSAFE_MODEL_TYPES, get_model_config, get_task, get_tokenizer, load_base_model
from .run_folder import TASK_SETTINGS_FIELDS, find_trained_model
from .scoring import LabelScorer


logger = logging.getLogger(__name__)

__all__ = ["MODES", "InputFormat", "PrefixClassifier"]

MODES = ("score", "generate")


@dataclasses.dataclass(frozen=True)
class InputFormat:
    """How a sentence becomes model input (what :class:`LabelScorer` reads of the data arguments)."""

    source_prefix: str
    prompt_template: str
    max_source_length: int
    max_target_length: int

    @classmethod
    def from_settings(cls, settings: dict) -> InputFormat:
        """The format saved in `prefix_tuning.json`; a field it lacks takes the script's default."""
        defaults = {f.name: f.default for f in dataclasses.fields(DataTrainingArguments)}
        return cls(**{name: settings.get(name, defaults[name]) for name in TASK_SETTINGS_FIELDS})


def _resolve_dtype(dtype, torch_dtype):
    if dtype is not None and torch_dtype is not None:
        raise ValueError("Pass dtype or torch_dtype (its older name), not both.")
    dtype = dtype if dtype is not None else torch_dtype
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype; use e.g. 'float32', 'bfloat16' or torch.float16.")
        dtype = getattr(torch, dtype)
    return dtype


class PrefixClassifier:
    """Classify sentences with a trained model: `classifier(text_or_texts, top_k=1)`.

    Build it with :meth:`from_pretrained`; or, around a model already in memory (the trainer's), from a
    :class:`LabelScorer`: ``PrefixClassifier(scorer, mode="score", batch_size=32)``.
    """

    def __init__(self, scorer: LabelScorer, mode: str = "score", batch_size: int = 32, num_beams: int = 1):
        if mode not in MODES:
            raise ValueError(f"mode must be 'score' or 'generate', got {mode!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"num_beams must be a positive integer, got {num_beams!r}.")
        self.scorer, self.mode, self.batch_size, self.num_beams = scorer, mode, batch_size, num_beams

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        *,
        mode: str = "score",
        device: str | int | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        batch_size: int = 32,
        num_beams: int = 1,
        label_words: Sequence[str] | None = None,
        revision: str = "main",
        token: str | bool | None = None,
        cache_dir: str | None = None,
        trust_remote_code: bool = False,
    ) -> PrefixClassifier:
        """Load what `run_prefix_tuning.py` wrote to `model_name_or_path` (a folder or a Hub repo id).

        `device`: "cpu", "cuda", "cuda:1", a GPU index or a torch.device (default: the first GPU when there is
        one, else the CPU). `dtype` (or `torch_dtype`): the weights' dtype, e.g. torch.bfloat16 (default: as
        saved, float32 for the quickstart). `label_words`: only for an adapter saved without `prefix_tuning.json`
        (the label words are otherwise read from it). `revision`, `token`, `cache_dir`: of the Hub repo.
        """
        if not isinstance(model_name_or_path, str) or not model_name_or_path:
            raise ValueError(f"model_name_or_path must be a folder or Hub repo id, got {model_name_or_path!r}.")
        dtype = _resolve_dtype(dtype, torch_dtype)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if mode not in MODES:  # before loading anything
            raise ValueError(f"mode must be 'score' or 'generate', got {mode!r}.")
        args = ModelArguments(
            model_name_or_path=model_name_or_path,
            model_revision=revision,
            token=token,
            cache_dir=cache_dir,
            trust_remote_code=trust_remote_code,
        )
        trained = find_trained_model(args)
        if trained is None:
            get_model_config(args)  # a missing folder or Hub repo is named as such
            raise ArgumentError(
                f"{model_name_or_path} holds neither an adapter (adapter_config.json) nor prefix_tuning.json: it was "
                "not written by run_prefix_tuning.py. Give the --output_dir of a training run (or its Hub repo)."
            )
        labels = list(label_words) if label_words is not None else trained.settings.get("label_words")
        if not labels:
            raise ArgumentError(
                f"{model_name_or_path} has no prefix_tuning.json with its label words; pass label_words=[...] (the "
                "--label_words it was trained with)."
            )
        config = get_model_config(trained.base_args)
        task = get_task(config)
        if dtype == torch.float16 and config.model_type in FP16_UNSAFE_MODEL_TYPES:
            raise ArgumentError(
                f"dtype float16 makes {config.model_type} models overflow (inf/NaN); use torch.bfloat16 or float32."
            )
        saved_task = trained.settings.get("task")
        if saved_task is not None and saved_task != task:
            raise ArgumentError(f"{model_name_or_path} was trained as a {saved_task} model, but its base is {task}.")
        tokenizer = get_tokenizer(trained.base_args, task)
        model = trained.load(load_base_model(trained.base_args, config, task, dtype=dtype))
        model.to(device).eval()
        scorer = LabelScorer(model, tokenizer, labels, InputFormat.from_settings(trained.settings), task)
        logger.info("%s: a %s model with labels %s, on %s.", model_name_or_path, task, ", ".join(labels), device)
        return cls(scorer, mode=mode, batch_size=batch_size, num_beams=num_beams)

    @property
    def labels(self) -> list[str]:
        return list(self.scorer.labels)

    @property
    def task(self) -> str:
        return self.scorer.task

    @property
    def model(self):
        return self.scorer.model

    @property
    def tokenizer(self):
        return self.scorer.tokenizer

    @property
    def device(self) -> torch.device:
        return self.scorer.device

    def __repr__(self) -> str:
        return (
            f"PrefixClassifier(task={self.task!r}, labels={self.labels}, mode={self.mode!r}, "
            f"batch_size={self.batch_size}, device={str(self.device)!r})"
        )

    def __call__(self, inputs: str | Sequence[str], top_k: int | None = 1):
        """Classify one sentence or a list of them, `batch_size` at a time.

        Returns the shape of transformers' text-classification pipeline: for a string, ``[{"label", "score"}]``
        (its best label), or every label best first with ``top_k=None`` (the best `k` with ``top_k=k``); for a
        list, one such answer per sentence: a dict each with ``top_k=1``, a list of dicts each otherwise.
        Generate mode adds ``"answer"`` (the text the model wrote) and accepts only ``top_k=1``.
        """
        single = isinstance(inputs, str)
        texts = self._check_inputs(inputs)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None (every label), got {top_k!r}.")
        if self.mode == "generate" and top_k != 1:
            raise ValueError("top_k applies to mode='score'; in generate mode the model writes one answer (top_k=1).")
        results = []
        for start in range(0, len(texts), self.batch_size):
            results.extend(self.answer_batch(texts[start : start + self.batch_size]))
        if top_k is not None:
            results = [ranked[:top_k] for ranked in results]
        if top_k == 1 and not single:
            return [ranked[0] for ranked in results]
        return results[0] if single else results

    def _check_inputs(self, inputs) -> list[str]:
        if isinstance(inputs, str):
            texts = [inputs]
        elif isinstance(inputs, Sequence) or (hasattr(inputs, "__iter__") and not isinstance(inputs, (bytes, dict))):
            texts = list(inputs)
        else:
            raise TypeError(f"Expected a string or a list of strings, got {type(inputs).__name__}.")
        if not texts:
            raise ValueError("Expected a string or a list of strings, got an empty list.")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"Input {index} is a {type(text).__name__}, not a string.")
            if not text.strip():
                raise ValueError(f"Input {index} is empty: there is nothing to classify.")
        return texts

    def score_batch(self, texts: list[str]) -> tuple[list[list[dict]], torch.Tensor]:
        """Score mode's answers for one batch, and the summed log-probabilities they come from, shape (texts, labels):
        evaluation reads the loss of the true label from them instead of running the model once more."""
        log_scores = self.scorer.log_scores(texts)
        ranked = [
            sorted(
                ({"label": label, "score": p} for label, p in zip(self.labels, probs)), key=lambda item: -item["score"]
            )
            for probs in torch.softmax(log_scores, dim=1).tolist()
        ]
        return ranked, log_scores

    def answer_batch(self, texts: list[str], with_scores: bool = True) -> list[list[dict]]:
        """One batch, as it goes through the model: for each text, its labels best first (score mode) or the
        one answer it wrote (generate mode). Texts are used as they are (no checks, no stripping).

        This is the one answering path: `--do_predict` and evaluation call it too. ``with_scores=False`` skips the
        extra scoring pass of generate mode (``score`` is then None), for callers that keep only the answer."""
        if self.mode == "score":
            return self.score_batch(texts)[0]
        words = {normalise_answer(label): index for index, label in enumerate(self.labels)}
        answers = self.scorer.generate(texts, num_beams=self.num_beams)
        if with_scores:  # P(the model writes the label + end of sequence)
            written = torch.exp(self.scorer.log_scores(texts)).tolist()
        else:
            written = [None] * len(texts)
        out = []
        for answer, probs in zip(answers, written):
            index = words.get(normalise_answer(answer))
            if index is None:
                score = None if probs is None else max(0.0, 1.0 - sum(probs))
                out.append([{"label": None, "score": score, "answer": answer}])
            else:
                out.append([{"label": self.labels[index], "score": None if probs is None else probs[index],
                             "answer": answer}])  # fmt: skip
        return out
