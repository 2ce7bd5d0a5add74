"""Answering: rank classification over the label words (`score`) or free generation (`generate`).

Both work for seq2seq and decoder-only models, wrapped in peft or not, and are used by evaluation and by
batch prediction.
"""

from __future__ import annotations

import torch
from peft import PeftType

from .arguments import DataTrainingArguments
from .compat import _cache_keyword, _forward_parameters
from .preprocessing import causal_answer_ids, causal_prompt, seq2seq_source


__all__ = ["LabelScorer"]


def _returned_cache(output):
    """The key/value cache a forward with ``use_cache=True`` hands back (``cache`` from transformers 5.24 on)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


class LabelScorer:
    """Scores every label word for a batch of sentences, or lets the model write its answer.

    Rank classification: the score of a label is the summed log-probability of its tokens (including the
    end-of-sequence token the model was trained to write after it) given the input; the label probabilities are
    the softmax of those scores over the label set, so every input gets a valid label.
    """

    def __init__(self, model, tokenizer, labels: list[str], data_args: DataTrainingArguments, task: str):
        self.model, self.tokenizer, self.labels, self.data_args, self.task = model, tokenizer, labels, data_args, task
        if task == "seq2seq":
            self.answers = [list(ids) for ids in tokenizer(text_target=labels)["input_ids"]]
        else:
            self.answers = causal_answer_ids(tokenizer, labels)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, texts: list[str], padding_side: str = "right"):
        if self.task == "seq2seq":
            inputs = [seq2seq_source(self.data_args, text) for text in texts]
        else:
            inputs = [causal_prompt(self.data_args, text) for text in texts]
        previous, self.tokenizer.padding_side = self.tokenizer.padding_side, padding_side
        try:
            return self.tokenizer(
                inputs,
                max_length=self.data_args.max_source_length,
                truncation=True,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
        finally:
            self.tokenizer.padding_side = previous

    @torch.no_grad()
    def log_scores(self, texts: list[str]) -> torch.Tensor:
        """Summed log-probability of each label's tokens, shape (len(texts), len(labels)), float32 on CPU.

        The input is read once per batch and every label continues from it, all labels in one batched call:

        * seq2seq: one pass of the encoder and of the decoder's first step (the decoder start token, the same for
          every label), then the key/value cache (self- and cross-attention) is repeated once per label and the
          labels' tokens are teacher-forced in one decoder call over batch x labels rows;
        * decoder-only: one pass over the (right-padded) prompt, then its cache is repeated once per label and
          the answers continue each row from its own length, numbered as if they followed the prompt directly.

        The adapter (prefix, prompt tuning, LoRA, ``--prefix_scope all``) takes part in the first pass exactly as
        in training and lives on in the cache. The scores equal those of one whole forward per label (within
        float rounding; tests/test_scoring.py).
        """
        was_training = self.model.training
        self.model.eval()
        try:
            batch = self._encode(texts)
            scores = self._seq2seq_scores(batch) if self.task == "seq2seq" else self._causal_scores(batch)
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

    def _continue(self, cache, **inputs):
        """One call of the model under the adapter, continuing from `cache` (the adapter is already in it)."""
        base = self._base_model()
        return base(**inputs, **{_cache_keyword(base): cache}, use_cache=True, return_dict=True)

    def _seq2seq_scores(self, batch) -> torch.Tensor:
        size, labels = batch["input_ids"].shape[0], len(self.answers)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        answers, real = self._padded_answers(pad_id)
        shift = getattr(self.model, "prepare_decoder_input_ids_from_labels", None)
        if shift is not None:
            decoder_ids = shift(labels=answers)
        else:
            start = answers.new_full((labels, 1), self.model.config.decoder_start_token_id)
            decoder_ids = torch.cat([start, answers[:, :-1]], dim=1)
        # First decoder step: the start token, shared by every label. Runs the encoder (and the adapter) once.
        first = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=decoder_ids[:1, :1].expand(size, 1),
            use_cache=True,
            return_dict=True,
        )
        scores = torch.log_softmax(first.logits[:, -1].float(), dim=-1)[:, answers[:, 0]]  # (size, labels)
        if answers.shape[1] == 1:
            return scores
        cache = _returned_cache(first)
        cache.batch_repeat_interleave(labels)  # row b * labels + k: sentence b, label k
        encoder_states = first.encoder_last_hidden_state
        mask = batch["attention_mask"]
        if encoder_states.shape[1] > mask.shape[1]:  # prompt tuning: virtual tokens prepended to the encoder input
            mask = torch.cat([mask.new_ones(size, encoder_states.shape[1] - mask.shape[1]), mask], dim=1)
        rest = self._continue(
            cache,
            encoder_outputs=(encoder_states.repeat_interleave(labels, dim=0),),
            attention_mask=mask.repeat_interleave(labels, dim=0),
            decoder_input_ids=decoder_ids[:, 1:].repeat(size, 1),
        )
        log_probs = torch.log_softmax(rest.logits.float(), dim=-1)
        targets = answers[:, 1:].repeat(size, 1)
        picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        picked = picked.masked_fill(~real[:, 1:].repeat(size, 1), 0.0)  # label words shorter than the longest
        return scores + picked.sum(dim=1).view(size, labels)

    def _causal_scores(self, batch) -> torch.Tensor:
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        (size, width), labels = input_ids.shape, len(self.answers)
        answers, real = self._padded_answers(self.tokenizer.pad_token_id)
        lengths = mask.sum(dim=1)
        # The prompt, right-padded; only the logits after each row's last real token are needed (its answer's first
        # token), so only those positions go through the output layer where the model allows it.
        config = getattr(self.model, "active_peft_config", None)
        prepended = 0  # prompt tuning prepends its virtual tokens to the input, hence to the logits
        if config is not None and config.is_prompt_learning and config.peft_type != PeftType.PREFIX_TUNING:
            prepended = config.num_virtual_tokens
        last = lengths - 1 + prepended
        keep = torch.unique(last)
        extra = {"logits_to_keep": keep} if "logits_to_keep" in _forward_parameters(self._base_model()) else {}
        prompt = self.model(input_ids=input_ids, attention_mask=mask, use_cache=True, return_dict=True, **extra)
        logits = prompt.logits
        index = torch.searchsorted(keep, last) if extra else last
        first = logits[torch.arange(size, device=self.device), index].float()
        scores = torch.log_softmax(first, dim=-1)[:, answers[:, 0]]  # (size, labels)
        if answers.shape[1] == 1:
            return scores
        cache = _returned_cache(prompt)
        virtual = cache.get_seq_length() - width  # prefix or prompt-tuning tokens ahead of the prompt
        cache.batch_repeat_interleave(labels)  # row b * labels + k: sentence b, label k
        steps = answers.shape[1] - 1
        # Answer token j of row b sits right after the prompt's last real token: position virtual + length + j.
        positions = virtual + lengths.unsqueeze(1) + torch.arange(steps, device=self.device)
        full_mask = torch.cat([mask.new_ones(size, virtual), mask, mask.new_ones(size, steps)], dim=1)
        rest = self._continue(
            cache,
            input_ids=answers[:, :-1].repeat(size, 1),
            attention_mask=full_mask.repeat_interleave(labels, dim=0),
            position_ids=positions.repeat_interleave(labels, dim=0),
        )
        log_probs = torch.log_softmax(rest.logits.float(), dim=-1)
        targets = answers[:, 1:].repeat(size, 1)
        picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        picked = picked.masked_fill(~real[:, 1:].repeat(size, 1), 0.0)  # label words shorter than the longest
        return scores + picked.sum(dim=1).view(size, labels)

    def probabilities(self, texts: list[str]) -> torch.Tensor:
        return torch.softmax(self.log_scores(texts), dim=1)

    @torch.no_grad()
    def generate(self, texts: list[str], **generate_kwargs) -> list[str]:
        """The model's own answers (decoded, special tokens removed), e.g. for `--eval_mode generate`."""
        was_training = self.model.training
        self.model.eval()
        try:
            batch = self._encode(texts, padding_side="left" if self.task == "causal" else "right")
            generate_kwargs.setdefault("max_new_tokens", max(len(a) for a in self.answers) + 2)
            generate_kwargs.setdefault("do_sample", False)
            generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
            output = self.model.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **generate_kwargs
            )
        finally:
            self.model.train(was_training)
        if self.task == "causal":
            output = output[:, batch["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(output, skip_special_tokens=True)
