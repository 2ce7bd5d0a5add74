"""The model side of answering: rank classification over the label words (`log_scores`) and free generation
(`generate`), for a batch of sentences, seq2seq or decoder-only, and for a batch whose rows read different adapters.

Two ways to hold the model:

* one model as it is (a peft model with its active adapter, a fully fine-tuned model, the base model): every row is
  answered by it, through peft's own forward and ``generate`` (evaluation during training, ``--do_predict``, a
  single-adapter :class:`~prefix_tuning_utils.classifier.PrefixClassifier`);
* a frozen base model with an :class:`~.bank.AdapterBank`: ``adapters[i]`` names the adapter of row *i* (None: the
  base model), and the rows' virtual tokens go in beside the input (:class:`~.bank.VirtualTokens`): the prefix as the
  model's key/value cache, prompt-tuning embeddings before the input embeddings, ``--prefix_scope all`` prefixes
  through the attention function, each with its mask and, for decoder-only models, its position ids.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import torch
from peft import PeftType

from ..compat import _cache_keyword, _forward_parameters
from ..input_format import InputFormat, answer_token_ids
from .bank import AdapterBank, VirtualTokens


__all__ = ["LabelScorer"]


def _returned_cache(output):
    """The key/value cache a forward with ``use_cache=True`` hands back (``cache`` from transformers 5.24 on)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


@contextlib.contextmanager
def _max_new_tokens_only(model):
    """Within the block, the model's generation config sets no `max_length`: every call here gives `max_new_tokens`,
    and Seq2SeqTrainer's evaluation writes its default max_length (20) into the config, which would make generate()
    warn that one overrides the other."""
    config = getattr(model, "generation_config", None)
    if config is None or config.max_length is None:
        yield
        return
    saved, config.max_length = config.max_length, None
    try:
        yield
    finally:
        config.max_length = saved


def _ones(rows: int, columns: int, like: torch.Tensor) -> torch.Tensor:
    return like.new_ones(rows, columns)


def _cat_masks(*masks: torch.Tensor | None) -> torch.Tensor:
    return torch.cat([mask for mask in masks if mask is not None], dim=1)


class LabelScorer:
    """Scores every label word for a batch of sentences, or lets the model write its answer.

    Rank classification: the score of a label is the summed log-probability of its tokens (including the
    end-of-sequence token the model was trained to write after it) given the input; the label probabilities are
    the softmax of those scores over the label set, so every input gets a valid label.
    """

    def __init__(
        self, model, tokenizer, labels: list[str], input_format: InputFormat, bank: AdapterBank | None = None
    ):
        self.model, self.tokenizer, self.labels = model, tokenizer, list(labels)
        self.input_format, self.bank = input_format, bank
        self.answers = answer_token_ids(tokenizer, self.labels, input_format.task)
        if bank is not None:
            bank_task = "seq2seq" if bank.seq2seq else "causal"
            if bank_task != input_format.task:
                raise ValueError(
                    f"The adapter bank is for a {bank_task} model, the input format for {input_format.task}."
                )

    @property
    def task(self) -> str:
        return self.input_format.task

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- input ----------------------------------------------------------------------------------------------------

    def _formats(self, count: int, adapters: Sequence[str | None] | None) -> list[InputFormat]:
        if adapters is None:
            return [self.input_format] * count
        if self.bank is None:
            raise ValueError("adapters= needs a scorer built on an AdapterBank (several adapters of one base model).")
        if len(adapters) != count:
            raise ValueError(f"{len(adapters)} adapters for {count} texts: give one adapter per text.")
        return [self.input_format if name is None else self.bank.adapter(name).input_format for name in adapters]

    def _encode(self, texts: list[str], padding_side: str = "right", adapters: Sequence[str | None] | None = None):
        """Token ids and attention mask of the batch, each text formatted (and truncated) as its adapter was
        trained."""
        formats = self._formats(len(texts), adapters)
        previous, self.tokenizer.padding_side = self.tokenizer.padding_side, padding_side
        try:
            if len({(f.source_prefix, f.prompt_template, f.max_source_length) for f in formats}) == 1:
                fmt = formats[0]
                return self.tokenizer(
                    [fmt.source(text) for text in texts],
                    max_length=fmt.max_source_length,
                    truncation=True,
                    padding=True,
                    return_tensors="pt",
                ).to(self.device)
            features = [
                self.tokenizer(fmt.source(text), max_length=fmt.max_source_length, truncation=True)
                for fmt, text in zip(formats, texts)
            ]
            return self.tokenizer.pad(features, padding=True, return_tensors="pt").to(self.device)
        finally:
            self.tokenizer.padding_side = previous

    def _virtual(self, count: int, adapters: Sequence[str | None] | None) -> VirtualTokens | None:
        if adapters is None:
            return None
        self._formats(count, adapters)  # checks
        return self.bank.virtual_tokens(self.bank.rows(adapters, device=self.device))

    @contextlib.contextmanager
    def _all_scope(self, virtual: VirtualTokens | None):
        """Within the block, the ``--prefix_scope all`` prefixes of the model are the rows' own."""
        routed = self._base_model().__dict__.get("_prefix_scope_routed")
        if virtual is None or routed is None:
            yield
            return
        routed.rows = virtual
        try:
            yield
        finally:
            routed.rows = None

    # --- scores ---------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def log_scores(self, texts: list[str], adapters: Sequence[str | None] | None = None) -> torch.Tensor:
        """Summed log-probability of each label's tokens, shape (len(texts), len(labels)), float32 on CPU.

        The input is read once per batch and every label continues from it, all labels in one batched call:

        * seq2seq: one pass of the encoder and of the decoder's first step (the decoder start token, the same for
          every label), then the key/value cache (self- and cross-attention) is repeated once per label and the
          labels' tokens are teacher-forced in one decoder call over batch x labels rows;
        * decoder-only: one pass over the (right-padded) prompt, then its cache is repeated once per label and
          the answers continue each row from its own length, numbered as if they followed the prompt directly.

        The adapter (prefix, prompt tuning, LoRA, ``--prefix_scope all``) takes part in the first pass exactly as
        in training and lives on in the cache. The scores equal those of one whole forward per label (within
        float rounding; tests/test_scoring.py). With `adapters` (a bank), row *i* is answered by ``adapters[i]``
        (None: the base model) and scores as that adapter alone would (tests/test_mixed_adapters.py).
        """
        was_training = self.model.training
        self.model.eval()
        try:
            batch = self._encode(texts, adapters=adapters)
            virtual = self._virtual(len(texts), adapters)
            with self._all_scope(virtual):
                if self.task == "seq2seq":
                    scores = self._seq2seq_scores(batch, virtual)
                else:
                    scores = self._causal_scores(batch, virtual)
        finally:
            self.model.train(was_training)
        return scores.float().cpu()

    def _padded_answers(self, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The label words' token ids right-padded to one width, and the mask of their real tokens."""
        width = max(len(answer) for answer in self.answers)
        ids = torch.full((len(self.answers), width), pad_id, dtype=torch.long, device=self.device)
        for k, answer in enumerate(self.answers):
            ids[k, : len(answer)] = torch.tensor(answer, device=self.device)
        return ids, ids.new_tensor([[j < len(a) for j in range(width)] for a in self.answers], dtype=torch.bool)

    def _base_model(self):
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _call_base(self, cache, **inputs):
        """One call of the base model with `cache` (holding the adapter's prefix, or the input read so far)."""
        base = self._base_model()
        if cache is not None:
            inputs[_cache_keyword(base)] = cache
        return base(**inputs, use_cache=True, return_dict=True)

    def _label_log_probs(self, logits: torch.Tensor, answers: torch.Tensor, real: torch.Tensor, size: int):
        """Summed log-probabilities of the answers' tokens after the first, from logits of batch x labels rows."""
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        targets = answers[:, 1:].repeat(size, 1)
        picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        picked = picked.masked_fill(~real[:, 1:].repeat(size, 1), 0.0)  # label words shorter than the longest
        return picked.sum(dim=1).view(size, len(self.answers))

    def _encoder_inputs(self, batch, virtual: VirtualTokens | None) -> dict:
        """What the encoder reads: the token ids, or (prompt tuning in a bank) the rows' prompt embeddings first."""
        if virtual is None or virtual.prompt is None:
            return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        embeddings = self._base_model().get_input_embeddings()(batch["input_ids"])
        return {
            "inputs_embeds": torch.cat([virtual.prompt.to(embeddings.dtype), embeddings], dim=1),
            "attention_mask": _cat_masks(virtual.prompt_mask, batch["attention_mask"]),
        }

    def _seq2seq_scores(self, batch, virtual: VirtualTokens | None) -> torch.Tensor:
        size, labels = batch["input_ids"].shape[0], len(self.answers)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        answers, real = self._padded_answers(pad_id)
        shift = getattr(self._base_model(), "prepare_decoder_input_ids_from_labels", None)
        if shift is not None:
            decoder_ids = shift(labels=answers)
        else:
            start = answers.new_full((labels, 1), self.model.config.decoder_start_token_id)
            decoder_ids = torch.cat([start, answers[:, :-1]], dim=1)
        # First decoder step: the start token, shared by every label. Runs the encoder (and the adapter) once.
        if virtual is None:
            first = self.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                decoder_input_ids=decoder_ids[:1, :1].expand(size, 1),
                use_cache=True,
                return_dict=True,
            )
            mask = batch["attention_mask"]
        else:
            encoder = self._encoder_inputs(batch, virtual)
            mask = encoder["attention_mask"]
            first = self._call_base(
                virtual.cache(),
                **encoder,
                decoder_input_ids=decoder_ids[:1, :1].expand(size, 1),
                decoder_attention_mask=self._decoder_mask(virtual, 1),
            )
        scores = torch.log_softmax(first.logits[:, -1].float(), dim=-1)[:, answers[:, 0]]  # (size, labels)
        if answers.shape[1] == 1:
            return scores
        cache = _returned_cache(first)
        cache.batch_repeat_interleave(labels)  # row b * labels + k: sentence b, label k
        encoder_states = first.encoder_last_hidden_state
        if encoder_states.shape[1] > mask.shape[1]:  # prompt tuning: virtual tokens prepended to the encoder input
            mask = torch.cat([mask.new_ones(size, encoder_states.shape[1] - mask.shape[1]), mask], dim=1)
        steps = answers.shape[1] - 1
        prefix_mask = None if virtual is None else self._decoder_mask(virtual, 1 + steps)
        rest = self._call_base(
            cache,
            encoder_outputs=(encoder_states.repeat_interleave(labels, dim=0),),
            attention_mask=mask.repeat_interleave(labels, dim=0),
            decoder_input_ids=decoder_ids[:, 1:].repeat(size, 1),
            **({} if prefix_mask is None else {"decoder_attention_mask": prefix_mask.repeat_interleave(labels, 0)}),
        )
        return scores + self._label_log_probs(rest.logits, answers, real, size)

    @staticmethod
    def _decoder_mask(virtual: VirtualTokens, tokens: int) -> torch.Tensor | None:
        """The decoder's self-attention mask over the rows' prefix slots and `tokens` decoder tokens."""
        if virtual.prefix_mask is None:
            return None
        return _cat_masks(virtual.prefix_mask, _ones(len(virtual.rows), tokens, virtual.prefix_mask))

    def _causal_scores(self, batch, virtual: VirtualTokens | None) -> torch.Tensor:
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        (size, width), labels = input_ids.shape, len(self.answers)
        answers, real = self._padded_answers(self.tokenizer.pad_token_id)
        lengths = mask.sum(dim=1)
        # The prompt, right-padded; only the logits after each row's last real token are needed (its answer's first
        # token), so only those positions go through the output layer where the model allows it.
        base = self._base_model()
        if virtual is None:
            config = getattr(self.model, "active_peft_config", None)
            prepended = 0  # prompt tuning prepends its virtual tokens to the input, hence to the logits
            if config is not None and config.is_prompt_learning and config.peft_type != PeftType.PREFIX_TUNING:
                prepended = config.num_virtual_tokens
        else:
            prepended = virtual.width("prompt")
        last = lengths - 1 + prepended
        keep = torch.unique(last)
        extra = {"logits_to_keep": keep} if "logits_to_keep" in _forward_parameters(base) else {}
        if virtual is None:
            prompt = self.model(input_ids=input_ids, attention_mask=mask, use_cache=True, return_dict=True, **extra)
        else:
            # Every slot before the input is masked or real; positions count the real ones (module docstring).
            full = _cat_masks(virtual.prefix_mask, virtual.prompt_mask, mask)
            positions = (full.cumsum(dim=1) - 1).clamp(min=0)[:, virtual.width("prefix") :]
            if virtual.prompt is None:
                inputs = {"input_ids": input_ids}
            else:
                embeddings = base.get_input_embeddings()(input_ids)
                inputs = {"inputs_embeds": torch.cat([virtual.prompt.to(embeddings.dtype), embeddings], dim=1)}
            prompt = self._call_base(virtual.cache(), **inputs, attention_mask=full, position_ids=positions, **extra)
        logits = prompt.logits
        index = torch.searchsorted(keep, last) if extra else last
        first = logits[torch.arange(size, device=self.device), index].float()
        scores = torch.log_softmax(first, dim=-1)[:, answers[:, 0]]  # (size, labels)
        if answers.shape[1] == 1:
            return scores
        cache = _returned_cache(prompt)
        steps = answers.shape[1] - 1
        if virtual is None:
            virtual_count = cache.get_seq_length() - width  # prefix or prompt-tuning tokens ahead of the prompt
            offsets = lengths.new_full((size,), virtual_count)
            full = torch.cat([mask.new_ones(size, virtual_count), mask], dim=1)
        else:
            offsets = full[:, : full.shape[1] - width].sum(dim=1)  # the real virtual tokens of each row
        cache.batch_repeat_interleave(labels)  # row b * labels + k: sentence b, label k
        # Answer token j of row b sits right after the prompt's last real token: position virtual + length + j.
        positions = (offsets + lengths).unsqueeze(1) + torch.arange(steps, device=self.device)
        full_mask = torch.cat([full, mask.new_ones(size, steps)], dim=1)
        rest = self._call_base(
            cache,
            input_ids=answers[:, :-1].repeat(size, 1),
            attention_mask=full_mask.repeat_interleave(labels, dim=0),
            position_ids=positions.repeat_interleave(labels, dim=0),
        )
        return scores + self._label_log_probs(rest.logits, answers, real, size)

    def probabilities(self, texts: list[str], adapters: Sequence[str | None] | None = None) -> torch.Tensor:
        return torch.softmax(self.log_scores(texts, adapters), dim=1)

    # --- generation -----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, texts: list[str], adapters: Sequence[str | None] | None = None, **generate_kwargs) -> list[str]:
        """The model's own answers (decoded, special tokens removed), e.g. for `--eval_mode generate`."""
        was_training = self.model.training
        self.model.eval()
        try:
            batch = self._encode(texts, padding_side="left" if self.task == "causal" else "right", adapters=adapters)
            generate_kwargs.setdefault("max_new_tokens", max(len(a) for a in self.answers) + 2)
            generate_kwargs.setdefault("do_sample", False)
            generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
            virtual = self._virtual(len(texts), adapters)
            if virtual is None:
                with _max_new_tokens_only(self.model):
                    output = self.model.generate(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **generate_kwargs
                    )
                prompt_tokens = batch["input_ids"].shape[1]
            else:
                inputs = self._generation_inputs(batch, virtual)
                base = self._base_model()
                with self._all_scope(virtual), self._routed_generation(virtual, inputs), _max_new_tokens_only(base):
                    output = base.generate(**inputs, **generate_kwargs)
                prompt_tokens = batch["input_ids"].shape[1] if "input_ids" in inputs else 0
        finally:
            self.model.train(was_training)
        if self.task == "causal":
            output = output[:, prompt_tokens:]  # a decoder-only model returns the prompt before its answer
        return self.tokenizer.batch_decode(output, skip_special_tokens=True)

    def _generation_inputs(self, batch, virtual: VirtualTokens) -> dict:
        """The input of a routed ``generate``: token ids, or embeddings with the rows' prompt-tuning tokens first."""
        if self.task == "seq2seq":
            return self._encoder_inputs(batch, virtual)
        if virtual.prompt is None:
            return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        embeddings = self._base_model().get_input_embeddings()(batch["input_ids"])
        return {
            "inputs_embeds": torch.cat([virtual.prompt.to(embeddings.dtype), embeddings], dim=1),
            "attention_mask": _cat_masks(virtual.prompt_mask, batch["attention_mask"]),
        }

    @contextlib.contextmanager
    def _routed_generation(self, virtual: VirtualTokens, inputs: dict):
        """Within the block, the base model's ``generate`` steps carry the rows' virtual tokens: the prefix as the
        cache on the first step (as peft does for one adapter), and every step the mask of the prefix slots and, for
        decoder-only models, position ids counted over the real slots (module docstring). Beams repeat each row
        (``batch / rows`` times).

        The decoder-only mask is rebuilt here each step from the one given to ``generate`` and the tokens written
        since: transformers drops a mask of all ones, and numbers positions without the prefix."""
        base = self._base_model()
        original = base.prepare_inputs_for_generation
        key = _cache_keyword(base)
        seq2seq = self.task == "seq2seq"
        given_mask = inputs["attention_mask"]
        given_ids = inputs["input_ids"].shape[1] if "input_ids" in inputs else 0  # echoed in generate's input_ids

        @functools.wraps(original)
        def prepare_inputs_for_generation(input_ids, *args, **kwargs):
            model_inputs = original(input_ids, *args, **kwargs)
            times = input_ids.shape[0] // len(virtual.rows)
            rows = virtual.repeated(times)
            cache = model_inputs.pop("cache", None)
            cache = model_inputs.pop("past_key_values", None) if cache is None else cache
            if (cache is None or cache.get_seq_length() == 0) and rows.prefix_mask is not None:
                cache = rows.cache()  # the first step: the prefix is the cache
            if cache is not None:
                model_inputs[key] = cache
            if seq2seq:
                if rows.prefix_mask is not None:
                    model_inputs["decoder_attention_mask"] = self._decoder_mask(rows, input_ids.shape[1])
                return model_inputs
            written = input_ids.shape[1] - given_ids
            mask = given_mask.repeat_interleave(times, dim=0)
            full = _cat_masks(rows.prefix_mask, mask, _ones(mask.shape[0], written, mask))
            model_inputs["attention_mask"] = full
            current = model_inputs.get("inputs_embeds")
            current = model_inputs["input_ids"] if current is None else current
            model_inputs["position_ids"] = (full.cumsum(dim=1) - 1).clamp(min=0)[:, -current.shape[1] :]
            return model_inputs

        base.prepare_inputs_for_generation = prepare_inputs_for_generation
        try:
            yield
        finally:
            del base.prepare_inputs_for_generation
