"""Answering: rank classification over the label words (`score`) or free generation (`generate`).

Both work for seq2seq and decoder-only models, wrapped in peft or not, and are used by evaluation and by
batch prediction.
"""

from __future__ import annotations

import torch
from peft import PeftType

from .arguments import DataTrainingArguments
from .preprocessing import causal_answer_ids, causal_prompt, seq2seq_source


__all__ = ["LabelScorer"]


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

    @property
    def encoder_is_shared(self) -> bool:
        """True when the encoder's output does not depend on the answer, so it can be computed once per batch.

        Holds for seq2seq models, plain or with a prefix (which lives in the decoder) or LoRA; not for prompt
        tuning, whose virtual tokens peft prepends to the encoder input inside its own forward.
        """
        if self.task != "seq2seq":
            return False
        config = getattr(self.model, "active_peft_config", None)
        return config is None or not config.is_prompt_learning or config.peft_type == PeftType.PREFIX_TUNING

    @torch.no_grad()
    def log_scores(self, texts: list[str]) -> torch.Tensor:
        """Summed log-probability of each label's tokens, shape (len(texts), len(labels)), float32 on CPU.

        A seq2seq model's encoder runs once per batch and its decoder once per label, fed the shifted label (what
        `labels=` does inside the model, without computing a loss); the scores are exactly those of one whole
        forward with `labels=` per label (tests/test_predict.py).
        """
        was_training = self.model.training
        self.model.eval()
        try:
            batch = self._encode(texts)
            encoder_outputs = None
            if self.encoder_is_shared:
                encoder_outputs = self.model.get_encoder()(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], return_dict=True
                )
            scores = [self._score_answer(batch, answer, encoder_outputs) for answer in self.answers]
        finally:
            self.model.train(was_training)
        return torch.stack(scores, dim=1).float().cpu()

    def _score_answer(self, batch, answer: list[int], encoder_outputs=None) -> torch.Tensor:
        size = batch["input_ids"].shape[0]
        answer_ids = torch.tensor(answer, device=self.device).unsqueeze(0).repeat(size, 1)
        if self.task == "seq2seq":
            extra = {} if encoder_outputs is None else {"encoder_outputs": encoder_outputs}
            shift = getattr(self.model, "prepare_decoder_input_ids_from_labels", None)
            if shift is not None:
                extra["decoder_input_ids"] = shift(labels=answer_ids)
            else:
                extra["labels"] = answer_ids
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **extra).logits
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            return log_probs.gather(-1, answer_ids.unsqueeze(-1)).squeeze(-1).sum(dim=1)
        # Decoder-only: prompt (right-padded) followed by the answer; each row's answer starts at its own length.
        lengths = batch["attention_mask"].sum(dim=1)
        width = batch["input_ids"].shape[1] + answer_ids.shape[1]
        input_ids = torch.full((size, width), self.tokenizer.pad_token_id, device=self.device)
        attention_mask = torch.zeros((size, width), dtype=torch.long, device=self.device)
        positions = lengths.unsqueeze(1) + torch.arange(answer_ids.shape[1], device=self.device)
        for row in range(size):
            n = int(lengths[row])
            input_ids[row, :n] = batch["input_ids"][row, :n]
        input_ids.scatter_(1, positions, answer_ids)
        attention_mask[
            torch.arange(width, device=self.device).unsqueeze(0) < (lengths + answer_ids.shape[1]).unsqueeze(1)
        ] = 1
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        logits = logits[:, -width:]  # prompt tuning prepends its virtual tokens to the logits
        # The token at position p is predicted by the logits at p - 1.
        predicted = logits.gather(1, (positions - 1).unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        log_probs = torch.log_softmax(predicted.float(), dim=-1)
        return log_probs.gather(-1, answer_ids.unsqueeze(-1)).squeeze(-1).sum(dim=1)

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
