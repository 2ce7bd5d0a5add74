"""--prefix_init_text packs the model's key/value cache into the prefix with peft's own
`initialize_kv_prefix_from_past_key_values`; it must give exactly the prefix that prefix_init.py packed by hand
before, kept here as the reference."""

from __future__ import annotations

import pytest
import torch
from peft import PrefixTuningConfig, TaskType, get_peft_model
from transformers import LlamaForCausalLM, T5ForConditionalGeneration

from prefix_tuning_utils.prefix_init import init_prefix_from_text
from tests.conftest import tiny_llama_config, tiny_t5_config


TEXT = "acme corp said its net sales rose 12 percent from a year earlier ."
COUNT = 6


def hand_packed_prefix(model, ids: list[int], task: str) -> torch.Tensor:
    """prefix_init.py's own packing before it used peft's: (layers * 2, heads, tokens, head_dim) -> (tokens, -1)."""
    base = model.get_base_model().eval()
    input_ids = torch.tensor([ids])
    with torch.no_grad(), model.disable_adapter():
        if task == "seq2seq":
            out = base(input_ids=input_ids, decoder_input_ids=input_ids, use_cache=True)
        else:
            out = base(input_ids=input_ids, use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    self_attention = getattr(cache, "self_attention_cache", cache)  # seq2seq: the decoder's self-attention
    rows = []
    for layer in self_attention.layers:
        rows += [layer.keys[0], layer.values[0]]  # (heads, tokens, head_dim)
    stacked = torch.stack(rows)  # (layers * 2, heads, tokens, head_dim)
    return stacked.permute(2, 0, 1, 3).reshape(len(ids), -1)


def prefix_model(task: str, vocab: int, dtype: torch.dtype):
    torch.manual_seed(0)
    if task == "seq2seq":
        base = T5ForConditionalGeneration(tiny_t5_config(vocab))
        config = PrefixTuningConfig(
            task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=COUNT, token_dim=32, num_attention_heads=4,
            num_layers=2,
        )  # fmt: skip
    else:  # grouped-query attention: 2 key/value heads for 4 query heads
        base = LlamaForCausalLM(tiny_llama_config(vocab))
        config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=COUNT)
    return get_peft_model(base.to(dtype), config)


@pytest.mark.parametrize(
    "task, dtype",
    [("seq2seq", torch.float32), ("seq2seq", torch.bfloat16), ("causal", torch.float32)],
    ids=["t5", "t5-bf16", "llama-gqa"],
)
def test_peft_packing_gives_the_hand_packed_prefix_bit_for_bit(tokenizer, task, dtype):
    model = prefix_model(task, len(tokenizer), dtype)
    embedding = model.prompt_encoder["default"].embedding.weight
    random_start = embedding.detach().clone()
    used = init_prefix_from_text(model, tokenizer, TEXT, task)
    assert used == tokenizer(TEXT, add_special_tokens=False)["input_ids"][:COUNT]
    reference = hand_packed_prefix(model, used, task).to(embedding.dtype)
    assert embedding.shape == reference.shape
    assert torch.equal(embedding.detach(), reference)
    assert not torch.equal(random_start, reference)  # the prefix really was set
