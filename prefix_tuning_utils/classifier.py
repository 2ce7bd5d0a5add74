"""Using trained adapters from Python: `PrefixClassifier`, shaped like transformers' text-classification pipeline.

    >>> from prefix_tuning_utils.classifier import PrefixClassifier
    >>> classify = PrefixClassifier.from_pretrained("/tmp/qs")  # the quickstart recipe's --output_dir, or a Hub id
    >>> classify("Borealis Bank said its net sales rose 25 percent from a year earlier .")  # the quickstart's answer
    [{'label': 'negative', 'score': 0.5597614645957947}]
    >>> classify(["...", "..."], top_k=None)  # every label of every sentence, best first

Many adapters of one base model, answered together (one frozen model, each adapter's prefix stacked beside the
others'; a batch may mix them):

    >>> classify = PrefixClassifier.from_pretrained({"acme": "runs/acme", "globex": "org/globex-prefix@v2"})
    >>> classify("Profit rose .", adapter="acme")
    >>> classify(["Profit rose .", "Sales fell ."], adapter=["acme", "globex"])  # one adapter per text

`from_pretrained` takes anything `run_prefix_tuning.py` wrote (an adapter of any --tuning_method, --prefix_scope
all, or a fully fine-tuned model; seq2seq or decoder-only) and finds its base model, label words and input format
through :func:`run_folder.find_trained_model`, exactly as `--do_eval` / `--do_predict` without `--do_train` do. A
mapping ``{name: folder or Hub id[@revision]}`` loads several adapters onto one base model
(:class:`~prefix_tuning_utils.answering.AdapterBank`): prefix tuning (``--prefix_scope decoder`` or ``all``) and
prompt tuning adapters, of any ``--num_virtual_tokens``; they must share the base model (name and revision, or the
same weights for a local base) and, in score mode, the label words. LoRA adapters and fully fine-tuned models change
the model's weights: such a model is served alone (a mapping of one).

The answers come from :class:`~prefix_tuning_utils.answering.Answerer`, the code evaluation and `--do_predict` use,
so the API, the prediction files and the evaluation metrics are one answering path. Two modes, as `--predict_mode`:

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

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence

import torch

from . import all_layer_prefix
from .answering import MODES, AdapterBank, Answerer, LabelScorer, bankable, read_adapter, read_adapter_config
from .arguments import ModelArguments
from .errors import ArgumentError
from .input_format import InputFormat
from .modeling import FP16_UNSAFE_MODEL_TYPES, get_model_config, get_task, get_tokenizer, load_base_model
from .precision import check_bf16_supported
from .run_files import WEIGHT_FILES
from .run_folder import find_trained_model


logger = logging.getLogger(__name__)

__all__ = ["MODES", "InputFormat", "PrefixClassifier", "parse_adapter_source"]


def _resolve_dtype(dtype, torch_dtype):
    if dtype is not None and torch_dtype is not None:
        raise ValueError("Pass dtype or torch_dtype (its older name), not both.")
    dtype = dtype if dtype is not None else torch_dtype
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype; use e.g. 'float32', 'bfloat16' or torch.float16.")
        dtype = getattr(torch, dtype)
    return dtype


def parse_adapter_source(source: str, revision: str = "main") -> tuple[str, str]:
    """(folder or Hub id, revision) of ``folder``, ``org/name`` or ``org/name@revision`` (a local folder is taken
    as it is, whatever it holds)."""
    if os.path.isdir(source) or "@" not in source:
        return source, revision
    path, _, at = source.rpartition("@")
    if not path or not at:
        raise ArgumentError(f"Adapter source {source!r}: expected a folder, a Hub id, or `hub_id@revision`.")
    return path, at


def _weights_digest(folder: str) -> str:
    """sha256 over the weight files of a local model folder: two folders with the same weights are one base."""
    digest = hashlib.sha256()
    for name in WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            digest.update(name.encode())
            with open(path, "rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
    return digest.hexdigest()


def _same_base(first, other) -> bool:
    """Whether two adapters' base models are the same model: the same Hub id and revision, or local folders with
    the same weights."""
    a, b = first.base_args, other.base_args
    if (a.model_name_or_path, a.model_revision) == (b.model_name_or_path, b.model_revision):
        return True
    local = [os.path.isdir(args.model_name_or_path) for args in (a, b)]
    if all(local):
        return _weights_digest(a.model_name_or_path) == _weights_digest(b.model_name_or_path)
    return False


class PrefixClassifier:
    """Classify sentences with a trained model: `classifier(text_or_texts, top_k=1, adapter=None)`.

    Build it with :meth:`from_pretrained`; or, around a model already in memory (the trainer's), from a
    :class:`LabelScorer`: ``PrefixClassifier(scorer, mode="score", batch_size=32)``.
    """

    def __init__(
        self,
        scorer: LabelScorer,
        mode: str = "score",
        batch_size: int = 32,
        num_beams: int = 1,
        adapter_names: Sequence[str] | None = None,
    ):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        self.answerer = Answerer(scorer, mode, num_beams)
        self.batch_size = batch_size
        # The names texts may ask for: a bank's adapters, or the one name of a model served alone.
        self.adapter_names = list(scorer.bank.names if scorer.bank is not None else adapter_names or [])

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | Mapping[str, str],
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
        """Load what `run_prefix_tuning.py` wrote to `model_name_or_path` (a folder or a Hub repo id), or several
        adapters of one base model from a mapping ``{name: folder or Hub id[@revision]}``.

        `device`: "cpu", "cuda", "cuda:1", a GPU index or a torch.device (default: the first GPU when there is
        one, else the CPU). `dtype` (or `torch_dtype`): the weights' dtype, e.g. torch.bfloat16 (default: as
        saved, float32 for the quickstart); bfloat16 is the path of `--bf16 --do_predict` (the base model in bf16,
        the adapter's own weights as saved, label scores summed in fp32) and is refused, before anything is loaded,
        on a device that cannot compute in it (a CPU without bf16 kernels, a GPU older than Ampere). `label_words`:
        for one model, the label words to rank instead of those saved in its `prefix_tuning.json` (as --label_words
        does for --do_predict; needed for a model saved without them); for several adapters, only for those saved
        without label words (each adapter answers with its own saved words; other words for one of those are
        refused). `revision`, `token`, `cache_dir`: of the Hub repo(s).
        """
        dtype = _resolve_dtype(dtype, torch_dtype)
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        if mode not in MODES:  # before loading anything
            raise ValueError(f"mode must be 'score' or 'generate', got {mode!r}.")
        if dtype == torch.bfloat16:  # as --bf16: refused where the device cannot compute in bf16 (precision.py)
            check_bf16_supported(device.type, "dtype bfloat16", fix="leave dtype out (float32)")
        hub = dict(token=token, cache_dir=cache_dir, trust_remote_code=trust_remote_code)
        if isinstance(model_name_or_path, Mapping):
            return cls._from_adapters(
                model_name_or_path, mode, device, dtype, batch_size, num_beams, label_words, revision, hub
            )
        if not isinstance(model_name_or_path, str) or not model_name_or_path:
            raise ValueError(
                f"model_name_or_path must be a folder or Hub repo id (or a mapping of names to them), got "
                f"{model_name_or_path!r}."
            )
        args = ModelArguments(model_name_or_path=model_name_or_path, model_revision=revision, **hub)
        scorer = cls._single_scorer(args, device, dtype, label_words)
        return cls(scorer, mode=mode, batch_size=batch_size, num_beams=num_beams)

    @staticmethod
    def _trained(args: ModelArguments):
        trained = find_trained_model(args)
        if trained is None:
            get_model_config(args)  # a missing folder or Hub repo is named as such
            raise ArgumentError(
                f"{args.model_name_or_path} holds neither an adapter (adapter_config.json) nor prefix_tuning.json: it "
                "was not written by run_prefix_tuning.py. Give the --output_dir of a training run (or its Hub repo)."
            )
        return trained

    @staticmethod
    def _base_config(trained, dtype):
        config = get_model_config(trained.base_args)
        task = get_task(config)
        if dtype == torch.float16 and config.model_type in FP16_UNSAFE_MODEL_TYPES:
            raise ArgumentError(
                f"dtype float16 makes {config.model_type} models overflow (inf/NaN); use torch.bfloat16 or float32."
            )
        saved_task = trained.settings.get("task")
        if saved_task is not None and saved_task != task:
            raise ArgumentError(f"{trained.path} was trained as a {saved_task} model, but its base is {task}.")
        return config, task

    @classmethod
    def _single_scorer(cls, args: ModelArguments, device, dtype, label_words) -> LabelScorer:
        """One model as it is: an adapter on its base (through peft), or a complete model."""
        trained = cls._trained(args)
        labels = list(label_words) if label_words is not None else trained.settings.get("label_words")
        if not labels:
            raise ArgumentError(
                f"{args.model_name_or_path} has no prefix_tuning.json with its label words; pass label_words=[...] "
                "(the --label_words it was trained with)."
            )
        config, task = cls._base_config(trained, dtype)
        tokenizer = get_tokenizer(trained.base_args, task)
        model = trained.load(load_base_model(trained.base_args, config, task, dtype=dtype))
        model.to(device).eval()
        logger.info("%s: a %s model with labels %s, on %s.", args.model_name_or_path, task, ", ".join(labels), device)
        return LabelScorer(model, tokenizer, labels, InputFormat.from_settings(trained.settings, task))

    @classmethod
    def _from_adapters(cls, sources, mode, device, dtype, batch_size, num_beams, label_words, revision, hub):
        if not sources:
            raise ValueError("Give at least one adapter: {name: folder or Hub id}.")
        for name in sources:
            if not isinstance(name, str) or not name.strip() or name != name.strip():
                raise ValueError(f"Adapter names must be non-empty strings without outer spaces, got {name!r}.")
        trained, args = {}, {}
        for name, source in sources.items():
            path, at = parse_adapter_source(str(source), revision)
            args[name] = ModelArguments(model_name_or_path=path, model_revision=at, **hub)
            trained[name] = cls._trained(args[name])
        first_name, first = next(iter(trained.items()))
        # The peft type of each adapter (None: a complete model); only virtual-token adapters share a bank.
        kinds = {
            name: read_adapter_config(model).get("peft_type") if model.adapter else None
            for name, model in trained.items()
        }
        alone = [name for name, kind in kinds.items() if not bankable({"peft_type": kind})]
        if alone and len(sources) > 1:
            what = "a fully fine-tuned model" if kinds[alone[0]] is None else f"a {kinds[alone[0]]} adapter"
            raise ArgumentError(
                f"Adapter {alone[0]!r} ({trained[alone[0]].path}) is {what}, which changes the base model's weights: "
                "it cannot share a batch with other adapters. Serve it alone (a mapping of one), and the prefix and "
                "prompt adapters together."
            )
        if alone:  # one LoRA adapter or one complete model: served as it is, under its name
            scorer = cls._single_scorer(args[first_name], device, dtype, label_words)
            return cls(scorer, mode=mode, batch_size=batch_size, num_beams=num_beams, adapter_names=[first_name])
        for name, model in trained.items():
            if not _same_base(first, model):
                base, other = first.base_args, model.base_args
                raise ArgumentError(
                    f"Adapter {name!r} ({model.path}) was trained on {other.model_name_or_path} (revision "
                    f"{other.model_revision}), adapter {first_name!r} on {base.model_name_or_path} (revision "
                    f"{base.model_revision}): one classifier answers with one base model. Load them separately."
                )
        config, task = cls._base_config(first, dtype)
        adapters, tables, peft_configs = [], [], []
        for name, model in trained.items():
            cls._base_config(model, dtype)  # each adapter's own task check
            saved = model.settings.get("label_words")
            if label_words is not None and saved and list(saved) != list(label_words):
                raise ArgumentError(
                    f"label_words= is for adapters saved without label words, but adapter {name!r} ({model.path}) "
                    f"answers with its own: {', '.join(saved)}. Leave label_words out, or load it alone to rank "
                    "other words."
                )
            try:
                adapter, table, peft_config = read_adapter(name, model, label_words, task)
            except ValueError as err:
                raise ArgumentError(str(err)) from None
            adapters.append(adapter)
            tables.append(table)
            peft_configs.append(peft_config)
        labels = list(adapters[0].labels)
        if mode == "score":
            for adapter in adapters[1:]:
                if list(adapter.labels) != labels:
                    raise ArgumentError(
                        f"Adapter {adapter.name!r} answers with the label words {', '.join(adapter.labels)}, adapter "
                        f"{adapters[0].name!r} with {', '.join(labels)}: score mode ranks one set of label words. "
                        "Load them separately, or use mode='generate'."
                    )
        else:  # generate mode: every row is matched against its own adapter's words; the scorer knows them all
            labels = list(dict.fromkeys(label for adapter in adapters for label in adapter.labels))
        tokenizer = get_tokenizer(first.base_args, task)
        base = load_base_model(first.base_args, config, task, dtype=dtype).to(device).eval()
        bank = AdapterBank.from_tables(adapters, tables, config, peft_configs).to(device, base.dtype)
        if bank.has_all_scope:
            all_layer_prefix.attach_routed(base)
        scorer = LabelScorer(base, tokenizer, labels, InputFormat(task), bank)
        logger.info(
            "%d adapters of %s (%s) loaded on %s: %s; their tables take %.1f MiB.",
            len(bank), first.base_args.model_name_or_path, task, device, ", ".join(bank.names), bank.nbytes / 2**20,
        )  # fmt: skip
        return cls(scorer, mode=mode, batch_size=batch_size, num_beams=num_beams)

    # --- what it holds --------------------------------------------------------------------------------------------

    @property
    def scorer(self) -> LabelScorer:
        return self.answerer.scorer

    @property
    def mode(self) -> str:
        return self.answerer.mode

    @property
    def num_beams(self) -> int:
        return self.answerer.num_beams

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

    @property
    def bank(self) -> AdapterBank | None:
        return self.scorer.bank

    def __repr__(self) -> str:
        adapters = f", adapters={self.adapter_names}" if self.adapter_names else ""
        return (
            f"PrefixClassifier(task={self.task!r}, labels={self.labels}, mode={self.mode!r}, "
            f"batch_size={self.batch_size}, device={str(self.device)!r}{adapters})"
        )

    # --- answering ------------------------------------------------------------------------------------------------

    def __call__(
        self, inputs: str | Sequence[str], top_k: int | None = 1, adapter: str | Sequence[str | None] | None = None
    ):
        """Classify one sentence or a list of them, `batch_size` at a time.

        Returns the shape of transformers' text-classification pipeline: for a string, ``[{"label", "score"}]``
        (its best label), or every label best first with ``top_k=None`` (the best `k` with ``top_k=k``); for a
        list, one such answer per sentence: a dict each with ``top_k=1``, a list of dicts each otherwise.
        Generate mode adds ``"answer"`` (the text the model wrote) and accepts only ``top_k=1``.

        `adapter` (several adapters loaded): the adapter that answers every text, or a list with one per text (None
        in the list: the base model); may be left out when only one adapter is loaded.
        """
        single = isinstance(inputs, str)
        texts = self._check_inputs(inputs)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None (every label), got {top_k!r}.")
        if self.mode == "generate" and top_k != 1:
            raise ValueError("top_k applies to mode='score'; in generate mode the model writes one answer (top_k=1).")
        adapters = self.row_adapters(adapter, len(texts))
        results = []
        for start in range(0, len(texts), self.batch_size):
            end = start + self.batch_size
            results.extend(self.answer_batch(texts[start:end], adapters[start:end] if adapters else None))
        if top_k is not None:
            results = [ranked[:top_k] for ranked in results]
        if top_k == 1 and not single:
            return [ranked[0] for ranked in results]
        return results[0] if single else results

    def row_adapters(self, adapter, count: int) -> list[str | None] | None:
        """Each text's adapter from `adapter` (a name, a list of names, or None), checked; None for a classifier of
        one model without names."""
        if not self.adapter_names:
            if adapter is not None:
                raise ValueError(
                    "adapter= applies to a classifier of several adapters (from_pretrained({name: ...}))."
                )
            return None
        if adapter is None:
            if len(self.adapter_names) > 1:
                raise ValueError(f"Name the adapter to answer with: adapter= one of {', '.join(self.adapter_names)}.")
            adapter = self.adapter_names[0]
        if isinstance(adapter, str):
            names = [adapter] * count
        elif isinstance(adapter, Sequence):
            names = list(adapter)
            if len(names) != count:
                raise ValueError(f"adapter= has {len(names)} names for {count} texts: give one per text.")
        else:
            raise TypeError(f"adapter must be a name or a list of names, got {type(adapter).__name__}.")
        for index, name in enumerate(names):
            if name is None and self.bank is not None:
                continue  # the base model
            if name not in self.adapter_names:
                raise ValueError(
                    f"Unknown adapter {name!r} (text {index}); this classifier has {', '.join(self.adapter_names)}."
                )
        return names

    def _check_inputs(self, inputs) -> list[str]:
        if isinstance(inputs, str):
            texts = [inputs]
        elif not isinstance(inputs, (bytes, bytearray, dict)) and (
            isinstance(inputs, Sequence) or hasattr(inputs, "__iter__")
        ):  # bytes are a Sequence too, of ints: refused as bytes, not as "Input 0 is a int"
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

    def score_batch(self, texts: list[str], adapters: Sequence[str | None] | None = None):
        """:meth:`Answerer.score_batch`: score mode's answers and the log-scores they come from."""
        return self.answerer.score_batch(texts, self._core_adapters(adapters))

    def answer_batch(
        self, texts: list[str], adapters: Sequence[str | None] | None = None, with_scores: bool = True
    ) -> list[list[dict]]:
        """:meth:`Answerer.answer_batch` for checked texts and adapters (no checks, no stripping here)."""
        return self.answerer.answer_batch(texts, self._core_adapters(adapters), with_scores=with_scores)

    def _core_adapters(self, adapters):
        """A model served alone under a name answers every row itself: the core gets no per-row adapters."""
        return adapters if self.bank is not None else None
