"""Checkpoint I/O (checkpointing.py): the whole prefix encoder of --prefix_projection runs, saved and loaded back, and
the completion mark that the output folder policy resumes from."""

from __future__ import annotations

import pytest
import torch
from peft import PrefixTuningConfig, TaskType, get_peft_model
from transformers import T5ForConditionalGeneration

from prefix_tuning_utils.checkpointing import load_prefix_encoder, mark_complete, save_prefix_encoder
from prefix_tuning_utils.output_dir import last_complete_checkpoint
from tests.conftest import tiny_t5_config


def prefix_model(projection: bool, seed: int):
    torch.manual_seed(seed)
    base = T5ForConditionalGeneration(tiny_t5_config(64))
    config = PrefixTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=3, prefix_projection=projection, encoder_hidden_size=16,
        token_dim=32, num_attention_heads=4, num_layers=2,
    )  # fmt: skip
    return get_peft_model(base, config)


def encoder_state(model) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.prompt_encoder["default"].state_dict().items()}


def test_the_projected_prefix_encoder_is_saved_and_loaded_back_whole(tmp_path):
    trained, fresh = prefix_model(True, seed=1), prefix_model(True, seed=2)
    saved = encoder_state(trained)
    assert {"embedding.weight", "transform.0.weight", "transform.2.bias"} <= set(saved)  # the MLP too
    assert not torch.equal(saved["transform.0.weight"], encoder_state(fresh)["transform.0.weight"])
    assert save_prefix_encoder(trained, str(tmp_path)) is True
    assert load_prefix_encoder(str(tmp_path), fresh) is True
    loaded = encoder_state(fresh)
    assert saved.keys() == loaded.keys()
    for key in saved:
        assert torch.equal(saved[key], loaded[key]), key


def test_a_checkpoint_without_the_prefix_encoder_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"has no prefix_encoder\.safetensors: it holds only the projected prefix"):
        load_prefix_encoder(str(tmp_path), prefix_model(True, seed=1))


def test_a_plain_prefix_needs_nothing_beyond_peft(tmp_path):
    model = prefix_model(False, seed=1)
    assert save_prefix_encoder(model, str(tmp_path)) is False
    assert load_prefix_encoder(str(tmp_path), model) is False  # the Trainer loads peft's adapter file as usual
    assert list(tmp_path.iterdir()) == []


def test_only_a_checkpoint_marked_complete_is_resumed_from(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    mark_complete(str(tmp_path / "checkpoint-2"))
    mark_complete(str(tmp_path / "checkpoint-4"))
    mark_complete(str(tmp_path / "checkpoint-8"))  # no such folder: nothing is written
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert not (tmp_path / "checkpoint-8").exists()
