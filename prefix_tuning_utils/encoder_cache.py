"""`--cache_encoder_outputs`: run the frozen encoder of a seq2seq model once, before training, not every epoch.

With peft's prefix (``--prefix_scope decoder``, the default) only the decoder's self-attention gets virtual tokens:
the encoder is frozen and sees no prefix, so its output for a sentence depends on nothing that training changes,
except dropout. With the encoder's dropout off (this flag turns it off: the encoder runs once, in eval mode, and
its dropout modules are set to p = 0 for the rest of the run, see :func:`encoder_dropout_off`), that output is the
same in every epoch. :class:`EncoderOutputCache` computes it once for every training example, batched and sorted by
length, and the trainer feeds it to the model as ``encoder_outputs``: training then runs only the decoder. The
losses and the trained prefix equal those of an uncached run whose encoder dropout is off (decoder dropout is
unchanged; tests/test_encoder_cache.py).

The cache is keyed by the example's row number in the training set (an ``example_index`` column that the trainer
adds), not by batch or order: any sampler, any number of processes, and a resumed run look up the same rows.

**Memory.** One vector of ``d_model`` numbers per real (unpadded) input token of the training set, kept in the dtype
the encoder returns: bf16 under ``--bf16`` on a CPU (the frozen weights are stored in bf16, and T5's last layer norm
returns their dtype; the decoder's cross-attention multiplies it in bf16 anyway, so an fp32 copy would hold the same
numbers in twice the memory), fp32 without ``--bf16`` and under ``--bf16`` on a GPU (autocast over fp32 weights,
whose layer norms return fp32)::

    bytes = sum over training examples of (input tokens) x d_model x (4 for fp32, 2 for bf16)

kept as one flat tensor on the training device (the GPU, or host memory on CPU), one copy per process. For t5-large
on Financial PhraseBank (2,037 training sentences, 67,697 T5 tokens with end-of-sequence, 33.2 a sentence;
d_model 1024) that is 277 MB (264 MiB) in fp32 and 139 MB in bf16 (docs/speed.md).

**Why not also the cross-attention keys and values.** They would save the decoder's projection of the encoder
output into keys and values (2 matrix products per decoder layer and input token, forward only: they need no
gradient), but cost ``2 x decoder layers`` times the memory above: 48 x for t5-large (13.3 GB in fp32 for
PhraseBank, more than four times the model), and peft already hands the model its own cache object (the prefix) through
``past_key_values``, so the keys and values would have to be spliced into it every step. The encoder output is the
large saving (the encoder is half the model and runs on every input token); the projections are not worth the memory.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutput


logger = logging.getLogger(__name__)

__all__ = ["INDEX_COLUMN", "EncoderOutputCache", "encoder_dropout_off"]

# The column the trainer adds to the training set: the row number that keys the cache.
INDEX_COLUMN = "example_index"


def encoder_dropout_off(encoder: nn.Module) -> None:
    """Turn off every kind of dropout in `encoder` for good, also in training mode (model.train() cannot undo it).

    `nn.Dropout` modules get p = 0; attention modules that keep their rate as a float (T5Attention.dropout, BART's
    attention and activation dropout) and layer drop (BART's ``layerdrop``) get 0. With p = 0 torch's dropout
    returns its input as it is and draws no random numbers, so the rest of the model sees the same random stream.
    """
    for module in encoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in vars(module).items():
            if isinstance(value, float) and (name.endswith("dropout") or name.endswith("layerdrop")):
                setattr(module, name, 0.0)


class EncoderOutputCache:
    """The encoder's last hidden state of every training example, unpadded, in one flat tensor (module doc)."""

    def __init__(self, states: torch.Tensor, lengths: list[int]):
        self.states = states
        self.lengths = torch.tensor(lengths, dtype=torch.long)
        self.offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
        torch.cumsum(self.lengths, 0, out=self.offsets[1:])

    @property
    def nbytes(self) -> int:
        return self.states.numel() * self.states.element_size()

    @classmethod
    @torch.no_grad()
    def build(cls, encoder: nn.Module, dataset, batch_size: int, device, autocast=None, show_progress: bool = True,
              pad_token_id: int = 0) -> EncoderOutputCache:  # fmt: skip
        """Run `encoder` once over `dataset` (columns input_ids, attention_mask), in batches of similar length.

        `autocast`: a function returning the context manager training runs the model under (mixed precision), so
        that the cached output is what the encoder returns during training.
        """
        ids = dataset["input_ids"]
        lengths = [len(row) for row in ids]
        order = sorted(range(len(ids)), key=lambda i: lengths[i], reverse=True)  # little padding, longest first
        was_training = encoder.training
        encoder.eval()
        states = None
        try:
            batches = range(0, len(order), batch_size)
            for start in tqdm(batches, desc="Encoding the training set once", disable=not show_progress):
                rows = order[start : start + batch_size]
                width = max(lengths[i] for i in rows)
                input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    input_ids[r, : lengths[i]] = torch.tensor(ids[i])
                    mask[r, : lengths[i]] = 1
                with autocast() if autocast is not None else contextlib.nullcontext():
                    hidden = encoder(
                        input_ids=input_ids.to(device), attention_mask=mask.to(device), return_dict=True
                    ).last_hidden_state
                if states is None:
                    states = torch.empty((sum(lengths), hidden.shape[-1]), dtype=hidden.dtype, device=hidden.device)
                    offsets = [0]
                    for length in lengths:
                        offsets.append(offsets[-1] + length)
                for r, i in enumerate(rows):
                    states[offsets[i] : offsets[i + 1]] = hidden[r, : lengths[i]]
        finally:
            encoder.train(was_training)
        if states is None:
            states = torch.empty((0, 0), device=device)
        cache = cls(states, lengths)
        logger.info(
            f"Encoder outputs of {len(lengths):,} training examples ({sum(lengths):,} tokens) cached on {states.device}: "
            f"{cache.nbytes / 2**20:.1f} MiB ({states.dtype})"
        )
        return cache

    def encoder_outputs(self, indices: torch.Tensor, width: int) -> BaseModelOutput:
        """The cached outputs of rows `indices`, zero-padded to `width` tokens (as the batch's input_ids).

        Padding positions are masked out of the cross-attention (weight exactly 0), so their value does not matter.
        """
        rows = indices.tolist()
        out = self.states.new_zeros((len(rows), width, self.states.shape[-1]))
        for r, i in enumerate(rows):
            start, end = int(self.offsets[i]), int(self.offsets[i + 1])
            if end - start > width:
                raise RuntimeError(
                    f"Training example {i} has {end - start} input tokens in the encoder cache but {width} in its "
                    "batch: the training set changed after the cache was built."
                )
            out[r, : end - start] = self.states[start:end]
        return BaseModelOutput(last_hidden_state=out)
