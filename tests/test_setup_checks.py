"""The trainer's own refusal of --cache_encoder_outputs where the encoder's output can change (setup_checks.py), for
callers that bypass the argument checks; the other refusals are in test_encoder_cache.py and test_distributed.py."""

from __future__ import annotations

import pytest
import torch
from peft import PrefixTuningConfig, TaskType, get_peft_model
from transformers import T5ForConditionalGeneration

from prefix_tuning_utils.all_layer_prefix import attach
from prefix_tuning_utils.errors import ArgumentError
from prefix_tuning_utils.setup_checks import check_encoder_cacheable
from tests.conftest import tiny_t5_config


def prefix_t5():
    torch.manual_seed(0)
    config = PrefixTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=3, token_dim=32, num_attention_heads=4, num_layers=2
    )
    return get_peft_model(T5ForConditionalGeneration(tiny_t5_config(64)), config)


def test_a_prefix_in_every_layer_reaches_the_encoder_and_is_refused():
    model = prefix_t5()
    check_encoder_cacheable(model, True)  # peft's decoder prefix: the encoder sees none
    attach(model)  # --prefix_scope all: encoder self-attention prefixes too
    with pytest.raises(ArgumentError, match=r"needs peft's prefix tuning with --prefix_scope decoder"):
        check_encoder_cacheable(model, True)


def test_a_decoder_only_model_is_refused():
    with pytest.raises(ArgumentError, match=r"^--cache_encoder_outputs needs a seq2seq model"):
        check_encoder_cacheable(prefix_t5(), False)
