"""prefix_tuning_utils/hub_files.py: the one lookup of a model's or adapter's file, in a folder or a Hub repo."""

from __future__ import annotations

import pytest

from prefix_tuning_utils.hub_files import find_model_file, get_model_file
from tests.fake_hub import FakeHub


def test_local_folder_and_subfolder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "adapter_config.json").write_text("{}")
    expected = str(tmp_path / "sub" / "adapter_config.json")
    assert get_model_file(tmp_path, "adapter_config.json", "sub") == expected
    assert find_model_file(str(tmp_path / "sub"), "adapter_config.json") == expected


def test_missing_local_file_raises_or_is_none(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        get_model_file(tmp_path, "adapter_config.json")
    assert find_model_file(tmp_path, "adapter_config.json") is None


def test_not_a_folder_nor_a_repo_id(tmp_path):
    with pytest.raises(ValueError):
        get_model_file(str(tmp_path / "no" / "such" / "folder"), "adapter_config.json")
    assert find_model_file(str(tmp_path / "no" / "such" / "folder"), "adapter_config.json") is None


def test_hub_repo_file_subfolder_and_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with FakeHub(hub_cache=tmp_path / "hub_cache") as hub:
        hub.add_file("me/adapter", "checkpoint-2/adapter_config.json", b'{"a": 1}')
        path = get_model_file("me/adapter", "adapter_config.json", "checkpoint-2", cache_dir=str(tmp_path / "cache"))
        assert open(path, encoding="utf-8").read() == '{"a": 1}'
        with pytest.raises(OSError):
            get_model_file("me/adapter", "tokenizer_config.json", cache_dir=str(tmp_path / "cache"))
        assert find_model_file("me/adapter", "tokenizer_config.json", cache_dir=str(tmp_path / "cache")) is None
