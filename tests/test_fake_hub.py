"""Tests of the fake Hub server (tests/fake_hub.py), driven through the real huggingface_hub clients."""

import json
import os
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
)

from tests.fake_hub import FakeHub


TOKEN = "hf_test_x"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Any torch work in these tests uses a single CPU thread (the previous setting is restored afterwards)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with FakeHub(hub_cache=tmp_path / "hub_cache") as fake:
        yield fake


def _make_folder(folder: Path, secret: str = "no secret") -> dict[str, bytes]:
    """A small model-like folder: a .json, a .safetensors and a README.md; returns {name: bytes}."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING", "note": secret}))
    save_file(
        {"prompt_embeddings": torch.arange(12, dtype=torch.float32).reshape(3, 4)},
        folder / "adapter_model.safetensors",
    )
    (folder / "README.md").write_text("---\nlibrary_name: peft\n---\n# Test adapter\n")
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_download_seeded_dataset_file(hub, tmp_path):
    data = b'{"text": "hello"}\n{"text": "world"}\n'
    hub.add_file("owner/data", "train/part-0.jsonl", data, repo_type="dataset")

    path = hf_hub_download("owner/data", "train/part-0.jsonl", repo_type="dataset", cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == data

    # Served from the dataset URL namespace, with plain HTTP only (HEAD for metadata, then GET).
    calls = [(r.method, r.path) for r in hub.requests if "/resolve/" in r.path]
    assert calls == [
        ("HEAD", "/datasets/owner/data/resolve/main/train/part-0.jsonl"),
        ("GET", "/datasets/owner/data/resolve/main/train/part-0.jsonl"),
    ]
    # Same repo id as a *model* does not exist.
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("owner/data", "train/part-0.jsonl", cache_dir=tmp_path / "c2")


def test_endpoint_is_patched_and_restored(tmp_path):
    before = (huggingface_hub.constants.ENDPOINT, huggingface_hub.hf_api.api.endpoint, os.environ.get("HF_ENDPOINT"))
    with FakeHub() as hub:
        assert hub.url.startswith("http://127.0.0.1:")
        assert huggingface_hub.constants.ENDPOINT == hub.url
        assert huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE.startswith(hub.url + "/")
        assert huggingface_hub.hf_api.api.endpoint == hub.url  # behind huggingface_hub.create_repo & co
        assert HfApi().endpoint == hub.url
        assert os.environ["HF_ENDPOINT"] == hub.url and "127.0.0.1" in os.environ["NO_PROXY"]
        assert "HF_HUB_OFFLINE" not in os.environ
        assert huggingface_hub.whoami(token=TOKEN)["name"] == "fake-user"
    after = (huggingface_hub.constants.ENDPOINT, huggingface_hub.hf_api.api.endpoint, os.environ.get("HF_ENDPOINT"))
    assert after == before


def test_create_repo_upload_folder_snapshot_roundtrip(hub, tmp_path):
    api = HfApi(token=TOKEN)
    url = api.create_repo("owner/adapter")
    assert url.repo_id == "owner/adapter" and url.startswith(hub.url)
    assert api.create_repo("owner/adapter", exist_ok=True).repo_id == "owner/adapter"
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo("owner/adapter")
    assert excinfo.value.response.status_code == 409

    expected = _make_folder(tmp_path / "out")
    info = api.upload_folder(repo_id="owner/adapter", folder_path=tmp_path / "out", commit_message="upload")
    assert info.oid == hub.commits("owner/adapter")[-1]
    assert hub.files("owner/adapter") == expected

    local = snapshot_download("owner/adapter", cache_dir=tmp_path / "c")
    assert {p.name: p.read_bytes() for p in Path(local).iterdir()} == expected
    assert api.list_repo_files("owner/adapter") == sorted(expected)

    # Auth header was sent on writes; no Xet / LFS traffic happened.
    commit = next(r for r in hub.requests if "/commit/" in r.path)
    assert commit.headers["Authorization"] == f"Bearer {TOKEN}"
    assert not [r.path for r in hub.requests if "xet" in r.path or "lfs" in r.path]
    assert hub.unhandled == []


def test_upload_folder_through_xet_pipeline_stays_plain_http(tmp_path, monkeypatch):
    """With hf_xet enabled, upload_folder uses its pipelined uploader: still no Xet traffic."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with FakeHub(disable_xet=False) as hub:
        expected = _make_folder(tmp_path / "out")
        api = HfApi(token=TOKEN)
        api.create_repo("owner/pipelined", repo_type="dataset")
        api.upload_folder(repo_id="owner/pipelined", repo_type="dataset", folder_path=tmp_path / "out")
        assert hub.files("owner/pipelined", repo_type="dataset") == expected

        hub.fail_commit = 403  # 4xx are not retried by the pipeline => fails fast
        (tmp_path / "out" / "extra.txt").write_text("more")
        with pytest.raises(HfHubHTTPError) as excinfo:
            api.upload_folder(repo_id="owner/pipelined", repo_type="dataset", folder_path=tmp_path / "out")
        assert excinfo.value.response.status_code == 403
        assert "extra.txt" not in hub.files("owner/pipelined", repo_type="dataset")


@pytest.mark.parametrize("status", [500, 403])
def test_fail_commit(hub, tmp_path, status):
    api = HfApi(token=TOKEN)
    api.create_repo("owner/failing")
    _make_folder(tmp_path / "out", secret="hf_SECRET_token_123")
    hub.fail_commit = status
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.upload_folder(repo_id="owner/failing", folder_path=tmp_path / "out")
    assert excinfo.value.response.status_code == status
    assert hub.files("owner/failing") == {}
    # The rejected bytes were still received, and are visible to leak checks.
    assert b"hf_SECRET_token_123" in hub.all_uploaded_bytes()
    assert hub.uploads and not any(u.committed for u in hub.uploads)

    hub.fail_commit = None
    api.upload_folder(repo_id="owner/failing", folder_path=tmp_path / "out")
    assert "adapter_model.safetensors" in hub.files("owner/failing")


def test_fail_create_repo(hub):
    hub.fail_create_repo = 500
    with pytest.raises(HfHubHTTPError) as excinfo:
        HfApi(token=TOKEN).create_repo("owner/nope")
    assert excinfo.value.response.status_code == 500
    assert not hub.repo_exists("owner/nope")


def test_missing_file_raises_entry_not_found(hub, tmp_path):
    hub.add_file("owner/model", "config.json", b"{}")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("owner/model", "missing.json", cache_dir=tmp_path / "c")
    assert HfApi().file_exists("owner/model", "config.json")
    assert not HfApi().file_exists("owner/model", "missing.json")


def test_transformers_and_peft_load_from_fake_hub(hub, tmp_path):
    """AutoConfig / AutoTokenizer / PeftConfig / PeftModel.from_pretrained(repo_id), and push_to_hub."""
    import torch

    pytest.importorskip("peft")
    from peft import PeftConfig, PeftModel, PrefixTuningConfig, get_peft_model
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", "hello", "world"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<eos>")
    config = GPT2Config(vocab_size=len(vocab), n_positions=16, n_embd=8, n_layer=1, n_head=2)
    torch.manual_seed(0)
    base = GPT2LMHeadModel(config)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    api = HfApi(token=TOKEN)
    api.create_repo("owner/tiny-gpt2")
    api.upload_folder(repo_id="owner/tiny-gpt2", folder_path=tmp_path / "base")

    peft_model = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    peft_model.push_to_hub("owner/tiny-prefix", token=TOKEN)  # create_repo + create_commit
    assert "adapter_model.safetensors" in hub.files("owner/tiny-prefix")

    assert AutoConfig.from_pretrained("owner/tiny-gpt2").n_embd == 8
    tok = AutoTokenizer.from_pretrained("owner/tiny-gpt2")
    assert tok("hello world")["input_ids"] == [2, 3]
    assert PeftConfig.from_pretrained("owner/tiny-prefix").num_virtual_tokens == 2
    loaded = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained("owner/tiny-gpt2"), "owner/tiny-prefix")
    assert loaded.peft_config["default"].peft_type.value == "PREFIX_TUNING"
    assert hub.unhandled == [], [r.path for r in hub.unhandled]


def test_trainer_push_to_hub(hub, tmp_path):
    """Trainer.push_to_hub -> create_repo (in the token owner's namespace) + upload_folder; fail_commit makes it raise."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    model = GPT2LMHeadModel(GPT2Config(vocab_size=4, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        push_to_hub=True,
        hub_model_id="tiny-trainer",
        hub_token=TOKEN,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    trainer = Trainer(model=model, args=args)
    trainer.push_to_hub()
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub.files("fake-user/tiny-trainer"))

    hub.fail_commit = 500
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # something changed => a commit is attempted (unchanged files are skipped)
    with pytest.raises(HfHubHTTPError) as excinfo:
        trainer.push_to_hub()
    assert excinfo.value.response.status_code == 500
