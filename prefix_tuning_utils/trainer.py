"""The Trainer: `Seq2SeqTrainer` made exact for prefix tuning, with our own evaluation and safe checkpoints.

Besides what follows, :class:`PrefixTuningTrainer` evaluates by label scoring or generation for any model type
(:mod:`prefix_tuning_utils.answering`), writes checkpoints that hold what training needs (the whole prefix encoder
of `--prefix_projection` runs, a completion mark), and stops on a NaN/inf loss or weight without saving it.

Under data parallelism (DDP, FSDP, DeepSpeed):

Three things go wrong with the plain `Seq2SeqTrainer` (transformers 5.24) on more than one process:

* **The loss is multiplied by the number of processes, and so is the gradient.** T5's ``forward`` takes
  ``**kwargs`` (attention options), so the Trainer concludes that the model honours ``num_items_in_batch`` and
  normalises the loss itself (``model_accepts_loss_kwargs``). It then multiplies the loss by the number of
  processes, expecting a per-process *sum over the whole batch's tokens*; T5 returns a per-process *mean* instead.
  The logged ``train_loss`` comes out ``world_size`` times too large, and so does the averaged gradient (Adam
  hides most of it, gradient clipping does not). With gradient accumulation the same happens by the number of
  accumulation steps. We compute the loss ourselves (``compute_loss_func``): a sum of token losses divided by
  the number of target tokens in the whole (all processes, all accumulation steps) batch, which is what the
  Trainer's scaling expects: the loss and the gradient equal those of one process on the whole batch.
* **Evaluation counts padding duplicates.** The distributed sampler pads the last batch with copies of the first
  examples so that every process gets a batch; ``Seq2SeqTrainer.evaluate/predict`` gathers with
  ``accelerator.gather`` (to support ``num_return_sequences > 1``) and hands the copies to ``compute_metrics``.
  We gather with ``accelerator.gather_for_metrics``, which drops them, whenever one answer is generated per input.
* **The final ``train_loss`` can be process 0's alone:** the Trainer averages the loss over processes each time
  it logs, and adds what was accumulated since the last log without averaging. We log the last step.

Under FSDP and ZeRO-3 the prefix parameters are sharded, but peft computes the saved prefix by running the prefix
encoder on the local parameters (the save fails, or would write a shard); ``save_model`` gathers the prefix encoder
first (``whole_prefix_for_saving``).

The trainer also refuses set-ups that would silently do something else than asked: processes started by
``accelerate launch`` that are not in a process group (each would train alone), an FSDP or DeepSpeed config that
accelerate ignores (on CPU it runs plain DDP), and several GPUs in one process (torch DataParallel).

What moved out: the checkpoint I/O (the prefix encoder file, the completion mark, loading them back) and the
FSDP/ZeRO-3 prefix gathering are in :mod:`prefix_tuning_utils.checkpointing`; the set-up checks
(``check_distributed_setup``, ``check_encoder_cacheable``) in :mod:`prefix_tuning_utils.setup_checks`. This module
keeps the Trainer subclass: the loss, the sampler, the encoder cache's hooks, the divergence guard and evaluation.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Mapping

import datasets
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from accelerate.utils import gather_object
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import Seq2SeqTrainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .answering import Answerer, LabelScorer
from .checkpointing import load_prefix_encoder, mark_complete, save_prefix_encoder, whole_prefix_for_saving
from .data import LabelledData
from .encoder_cache import INDEX_COLUMN, EncoderOutputCache, encoder_dropout_off
from .errors import TrainingDivergedError
from .metrics import classification_metrics
from .output_dir import last_complete_checkpoint
from .run_folder import save_task_settings
from .sampling import SeededLengthGroupedSampler, token_lengths
from .setup_checks import check_distributed_setup, check_encoder_cacheable


logger = logging.getLogger(__name__)

__all__ = ["PrefixTuningTrainer", "LogLastStepCallback", "set_sample_count", "token_mean_loss"]


def token_mean_loss(
    outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None, shift: bool = False
):
    """Cross-entropy summed over the target tokens, divided by the number of target tokens in the whole batch.

    ``num_items_in_batch`` is counted by the Trainer over every process and every gradient accumulation step; the
    Trainer then multiplies the result by the number of processes, and DDP averages the gradients over them.
    Without it (evaluation), this is the mean over the target tokens of this batch. ``shift``: decoder-only
    models predict token t + 1 at position t (the Trainer's count of target tokens is the same either way: the
    first position of every example is a prompt token, never a target).
    """
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    logits = logits[:, -labels.shape[1] :]  # prompt tuning prepends its virtual tokens to a decoder-only model's
    labels = labels.to(logits.device)
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    total = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=-100, reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = labels.ne(-100).sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


class LogLastStepCallback(TrainerCallback):
    """Log on the last training step, so that the Trainer's final ``train_loss`` is averaged over all processes."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
        return control


class PrefixTuningTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` whose loss, metrics and saved adapter are the same on one process or many (module doc).

    Evaluation: `eval_mode="generate"` on a seq2seq model is Seq2SeqTrainer's own `predict_with_generate`
    evaluation. In the other cases (`score`, or any mode on a decoder-only model, whose training inputs already hold
    the answer), the evaluation loop computes the loss as usual and then answers the held-out sentences with
    :class:`LabelScorer`, split across processes and gathered once, so every example counts exactly once.
    """

    def __init__(self, *args, scorer: LabelScorer | None = None, eval_examples: LabelledData | None = None,
                 eval_mode: str = "generate", cache_encoder_outputs: bool = False, **kwargs):  # fmt: skip
        model = kwargs.get("model", args[0] if args else None)
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        self._encoder_decoder = bool(getattr(base.config, "is_encoder_decoder", False))
        self.cache_encoder_outputs = cache_encoder_outputs
        self.encoder_cache: EncoderOutputCache | None = None
        if cache_encoder_outputs:
            check_encoder_cacheable(model, self._encoder_decoder)
            encoder_dropout_off(base.get_encoder())
            train = kwargs.get("train_dataset")
            if isinstance(train, datasets.Dataset) and INDEX_COLUMN not in train.column_names:
                kwargs["train_dataset"] = train.add_column(INDEX_COLUMN, list(range(len(train))))
        kwargs.setdefault("compute_loss_func", functools.partial(token_mean_loss, shift=not self._encoder_decoder))
        super().__init__(*args, **kwargs)
        # T5's forward takes **kwargs for attention options and ignores `num_items_in_batch`: do not pass it.
        self.model_accepts_loss_kwargs = False
        self.add_callback(LogLastStepCallback())
        check_distributed_setup(self)
        self.scorer, self.eval_examples, self.eval_mode = scorer, eval_examples, eval_mode
        self.last_eval_answers: tuple[list[str], list[str]] | None = None
        self._own_eval_set = False  # evaluate() on the trainer's own eval set (not one passed in)
        self._loss_from_scores = False  # this evaluation takes its loss from the label scores (evaluation_loop)
        self._flops_per_token: float | None = None  # floating_point_ops

    # --- --cache_encoder_outputs (encoder_cache.py) ------------------------------------------------------------

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.cache_encoder_outputs and INDEX_COLUMN not in self._signature_columns:
            self._signature_columns.append(INDEX_COLUMN)  # keep the row number that keys the cache

    def train(self, *args, **kwargs):
        """Train; with --cache_encoder_outputs, encode the training set first (`encoder_cache_runtime` in the metrics:
        the Trainer's `train_runtime` starts after it)."""
        started = time.perf_counter()
        if self.cache_encoder_outputs and self.encoder_cache is None and self.train_dataset is not None:
            model = self.accelerator.unwrap_model(self.model)
            base = model.get_base_model() if isinstance(model, PeftModel) else model
            self.encoder_cache = EncoderOutputCache.build(
                base.get_encoder(),
                self.train_dataset,
                batch_size=self.args.per_device_eval_batch_size,
                device=self.args.device,
                autocast=self.accelerator.autocast,
                show_progress=not self.args.disable_tqdm and self.is_local_process_zero(),
                pad_token_id=base.config.pad_token_id or 0,
            )
        cache_seconds = time.perf_counter() - started
        output = super().train(*args, **kwargs)
        if self.cache_encoder_outputs:
            output.metrics["encoder_cache_runtime"] = round(cache_seconds, 4)
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if INDEX_COLUMN in inputs:
            inputs = dict(inputs)
            indices = inputs.pop(INDEX_COLUMN)
            if model.training and self.encoder_cache is not None:
                width = inputs["input_ids"].shape[1]
                inputs["encoder_outputs"] = self.encoder_cache.encoder_outputs(indices, width)
        if (
            self.compute_loss_func is not None
            and self._encoder_decoder
            and "labels" in inputs
            and "decoder_input_ids" not in inputs
        ):
            # The Trainer takes the labels out before calling the model when it computes the loss itself; the
            # decoder still needs its inputs (the labels shifted right), which the model would have made from them.
            unwrapped = self.accelerator.unwrap_model(model)
            base = unwrapped.get_base_model() if isinstance(unwrapped, PeftModel) else unwrapped
            inputs = {**inputs, "decoder_input_ids": base.prepare_decoder_input_ids_from_labels(inputs["labels"])}
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    def floating_point_ops(self, inputs) -> int:
        """The Trainer's FLOP estimate (6 x tokens x parameters), with the parameters counted once, not every step.

        transformers walks every parameter of the model on every training step to count them (2-4 ms per step on a
        t5-small, about 1.5 % of a prefix-tuning step on a CPU); the count does not change during training.
        """
        tokens = inputs.get("input_ids") if isinstance(inputs, Mapping) else None  # a BatchEncoding is no dict
        if not torch.is_tensor(tokens) or tokens.numel() == 0:
            return super().floating_point_ops(inputs)
        if self._flops_per_token is None:
            self._flops_per_token = super().floating_point_ops(inputs) / tokens.numel()
        return int(self._flops_per_token * tokens.numel())

    def _get_train_sampler(self, train_dataset=None):
        """`group_by_length`: batches of similar length, the same for any number of processes (sampling.py)."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or not isinstance(dataset, datasets.Dataset):
            return super()._get_train_sampler(train_dataset)
        if self.args.length_column_name in dataset.column_names:
            lengths = dataset[self.args.length_column_name]
        else:
            lengths = token_lengths(dataset, "input_ids")
        global_batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return SeededLengthGroupedSampler(lengths, global_batch, seed)

    def _one_answer_per_input(self) -> bool:
        gen_kwargs = getattr(self, "_gen_kwargs", None) or {}
        count = gen_kwargs.get("num_return_sequences")
        if count is None:
            count = getattr(self.model.generation_config, "num_return_sequences", None) or 1
        return count == 1

    # --- checkpoints that hold what training needs -------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        self._check_finite_parameters()
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            # Collective: every process takes part in gathering the prefix, then the main process writes it.
            with whole_prefix_for_saving(self.accelerator.unwrap_model(self.model), self.model_wrapped):
                super().save_model(output_dir, _internal_call=_internal_call)
        else:
            super().save_model(output_dir, _internal_call=_internal_call)
        if _internal_call and self.args.should_save:
            # A checkpoint (not the final adapter, which keeps only the resulting prefix): add the MLP.
            save_prefix_encoder(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            mark_complete(
                os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            )

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        if not load_prefix_encoder(resume_from_checkpoint, unwrapped):
            super()._load_from_checkpoint(resume_from_checkpoint, model=model)

    def _load_best_model(self):
        if not load_prefix_encoder(self.state.best_model_checkpoint, self.accelerator.unwrap_model(self.model)):
            super()._load_best_model()

    # --- divergence guard -----------------------------------------------------------------------------------

    def _diverged(self, what: str, step: int) -> TrainingDivergedError:
        output_dir = self.args.output_dir
        checkpoint = last_complete_checkpoint(output_dir)
        kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved"
        return TrainingDivergedError(
            f"{what} at step {step}; training stopped and nothing more was saved, {kept}. "
            f"Lower --learning_rate (now {self.args.learning_rate:g}) or set --max_grad_norm."
        )

    def _check_finite_parameters(self) -> None:
        """Never save NaN/inf weights: the last checkpoint on disk stays a good one."""
        for name, param in self.model.named_parameters():
            if param.requires_grad and not torch.isfinite(param).all():
                raise self._diverged(f"trainable parameter {name} became NaN or infinite", self.state.global_step)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        value = loss.detach().float().item()
        if not math.isfinite(value):
            raise self._diverged(f"training loss became {value}", self.state.global_step + 1)
        return loss

    # --- evaluation -----------------------------------------------------------------------------------------

    @property
    def own_metrics(self) -> bool:
        return (
            self.scorer is not None
            and self.eval_examples is not None
            and (self.eval_mode == "score" or self.scorer.task == "causal")
        )

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **gen_kwargs):
        self._own_eval_set = eval_dataset is None
        try:
            return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix,
                                    **gen_kwargs)  # fmt: skip
        finally:
            self._own_eval_set = False

    def loss_from_scores(self, prediction_loss_only: bool, metric_key_prefix: str) -> bool:
        """Whether this evaluation's loss can be read from the label scores instead of a pass of its own.

        Score mode already computes, for every held-out sentence, the summed log-probability of each label's tokens
        (end-of-sequence included): the true label's is minus the summed cross-entropy of exactly the tokens the
        loss pass would score. So ``eval_loss`` = that sum over the set / the number of those tokens, and the
        evaluation runs the model once instead of twice (the loss pass was about half of a SmolLM2 evaluation).
        Not when the loop's outputs are needed (``compute_metrics``), on another dataset than the trainer's
        own, or when --max_target_length cuts a label word (the loss pass would score fewer tokens).
        """
        return (
            self._own_eval_set
            and self.own_metrics
            and self.eval_mode == "score"
            and metric_key_prefix == "eval"
            and prediction_loss_only
            and max(len(answer) for answer in self.scorer.answers) <= self.scorer.input_format.max_target_length
        )

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):  # fmt: skip
        if self.compute_metrics is None:
            # Nothing would read the logits: do not gather them (for a decoder-only model with a large vocabulary
            # that is gigabytes, and most of the evaluation time).
            prediction_loss_only = True
        if self._one_answer_per_input():
            # Drop the copies the distributed sampler added to fill the last batch (see the module docstring).
            self.gather_function = functools.partial(
                self.accelerator.gather_for_metrics, use_gather_object=self.args.eval_use_gather_object
            )
        self._loss_from_scores = self.loss_from_scores(bool(prediction_loss_only), metric_key_prefix)
        try:
            # The loop still prepares the model (FSDP, DeepSpeed), counts the examples and runs the callbacks;
            # with the loss taken from the scores, its prediction_step does not run the model.
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only=prediction_loss_only, ignore_keys=ignore_keys,
                metric_key_prefix=metric_key_prefix,
            )  # fmt: skip
            if self._own_eval_set and self.own_metrics and metric_key_prefix == "eval":
                # The held-out examples' accuracy and F1; another dataset passed to evaluate() gets its loss only
                # (its examples are token ids here, not the sentences and labels that the scorer answers).
                metrics = self.answer_metrics(self.eval_examples)
                output.metrics.update({f"{metric_key_prefix}_{key}": value for key, value in metrics.items()})
        finally:
            self._loss_from_scores = False
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if self._loss_from_scores:
            return None, None, None  # the loss comes from the label scores (loss_from_scores)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save as usual, plus `prefix_tuning.json` (label words, input format), so the model scores on its own."""
        super()._save(output_dir, state_dict=state_dict)
        if self.scorer is not None and self.args.should_save:
            save_task_settings(output_dir or self.args.output_dir, self.scorer.labels, self.scorer.input_format)

    def answer(self, texts: list[str], labels: list[str] | None = None) -> tuple[list[str], float | None]:
        """The label (score mode) or the decoded answer (generate mode) for each text, across all processes, and,
        given the true labels in score mode, the mean cross-entropy of their tokens (else None)."""
        batch_size = self.args.per_device_eval_batch_size
        want_loss = labels is not None and self.eval_mode == "score"
        with self.accelerator.split_between_processes(list(range(len(texts)))) as indices:
            answers, loss_sum, loss_tokens = [], 0.0, 0
            progress = tqdm(  # its own bar: the evaluation loss's bar ends before the answering starts
                total=len(indices), unit="rows", desc="Scoring labels" if self.eval_mode == "score" else "Answering",
                disable=self.args.disable_tqdm or not self.is_local_process_zero(), leave=False,
            )  # fmt: skip
            answerer = Answerer(  # the one answering path (API, --do_predict), on the model being trained
                self.scorer, self.eval_mode, num_beams=self.args.generation_num_beams or 1
            )
            # As training computes: under --bf16 the answers are computed in bf16 (precision.py), the scores summed
            # in fp32; over weights already stored in bf16 the autocast adds no cast.
            with self.accelerator.autocast():
                for start in range(0, len(indices), batch_size):
                    rows = indices[start : start + batch_size]
                    chunk = [texts[i] for i in rows]
                    if self.eval_mode == "score":
                        ranked, log_scores = answerer.score_batch(chunk)
                        answers.extend(best[0]["label"] for best in ranked)
                        if want_loss:
                            gold = [self.scorer.labels.index(labels[i]) for i in rows]
                            loss_sum -= log_scores[torch.arange(len(rows)), gold].double().sum().item()
                            loss_tokens += sum(len(self.scorer.answers[k]) for k in gold)
                    else:
                        answered = answerer.answer_batch(chunk, with_scores=False)
                        answers.extend(ranked[0]["answer"] for ranked in answered)
                    progress.update(len(chunk))
            progress.close()
        if self.accelerator.num_processes > 1:
            # split_between_processes gives contiguous chunks in rank order, so gathering restores the input order.
            answers = gather_object(answers)
            if want_loss:  # the same on every process, so all of them take part in this gather or none
                sums = gather_object([(loss_sum, loss_tokens)])
                loss_sum, loss_tokens = sum(s for s, _ in sums), sum(n for _, n in sums)
        return answers, (loss_sum / loss_tokens if want_loss and loss_tokens else None)

    def answer_metrics(self, examples: LabelledData) -> dict[str, float]:
        """Accuracy and F1 of the answers to `examples`, and `loss` when this evaluation takes it from the scores."""
        model = self.model
        self.scorer.model = self.accelerator.unwrap_model(model) if hasattr(self, "accelerator") else model
        with torch.no_grad():
            answers, loss = self.answer(examples.texts, list(examples.labels) if self._loss_from_scores else None)
        self.last_eval_answers = (answers, list(examples.labels))  # for the model card's confusion matrix
        metrics = classification_metrics(answers, examples.labels, self.scorer.labels)
        return {"loss": loss, **metrics} if loss is not None else metrics


def set_sample_count(metrics: dict, prefix: str, expected: int) -> None:
    """Set ``<prefix>_samples`` to the size of the evaluated set, after checking that the metrics saw exactly it.

    `compute_metrics` reports how many answers it scored as ``<prefix>_samples``; under a distributed sampler that
    must still be every example exactly once (no padding duplicates, nothing dropped).
    """
    key = f"{prefix}_samples"
    scored = metrics.get(key)
    if scored is not None and scored != expected:
        raise RuntimeError(f"The {prefix} metrics were computed on {scored} answers for {expected} examples.")
    metrics[key] = expected
