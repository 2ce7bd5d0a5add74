"""`--prefix_scope all`: encoder self-attention and cross-attention prefixes (prefix_tuning_utils/all_layer_prefix/).

Reference for generation, as in tests/test_generation_uses_prefix.py: a manual greedy loop of full forward passes,
and beam-search scores recomputed by one forward pass. "decoder" below is peft's own prefix model; "all" is the
same model, with the same peft prefix, plus the added prefixes. "Exactly" means torch.equal: with its gates at zero
the `all` model is bit for bit the `decoder` model, and with the adapter disabled it is bit for bit the base model.

The learning test (a tiny T5 trained to reverse, frozen, then prefix-tuned to copy; ~20-50 s on one thread) prints
both learning curves with `-s`:
    OMP_NUM_THREADS=1 python -m pytest tests/test_prefix_scope.py -s -k learns
"""

from __future__ import annotations

import json
import time
import warnings

import pytest
import torch
from peft import PeftConfig, PeftModel, PrefixTuningConfig, TaskType, get_peft_model
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    BartConfig,
    DataCollatorForSeq2Seq,
    MT5Config,
    MT5ForConditionalGeneration,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.models.t5 import modeling_t5

from prefix_tuning_utils import all_layer_prefix, patching
from prefix_tuning_utils.all_layer_prefix import WEIGHTS_NAME, attach, get_all_layer_prefix
from prefix_tuning_utils.arguments import ArgumentError, PrefixArguments
from tests.conftest import REPO
from tests.helpers import (
    STEPS,
    generate,
    make_models,
    manual_greedy,
    padded_batch,
    plain_usage_snippet,
    run_main,
    sequence_log_probs,
)


def set_added_prefixes(model, seed: int = 1, scale: float = 3.0, gate_std: float = 2.0) -> None:
    """Non-zero gates and large prefixes, so that the added prefixes change the answers of the tiny model."""
    generator = torch.Generator().manual_seed(seed)
    prefixes = get_all_layer_prefix(model)
    with torch.no_grad():
        for param in prefixes.parameters():
            param.copy_(scale * torch.randn(param.shape, generator=generator))
        for kind in prefixes.KINDS:
            gate = prefixes.prefix(kind).gate
            gate.copy_(gate_std * torch.randn(gate.shape, generator=generator))


def scope_pair(prefix_projection: bool = False, attn_implementation: str = "sdpa", **overrides):
    """(decoder, all): two models with identical base weights and peft prefix; `all` has the added prefixes."""
    _, decoder = make_models(prefix_projection=prefix_projection, **overrides)
    _, full = make_models(prefix_projection=prefix_projection, **overrides)
    for model in (decoder, full):
        model.get_base_model().set_attn_implementation(attn_implementation)
    attach(full)
    return decoder, full


def logits(model, input_ids, attention_mask, decoder_input_ids=None):
    decoder_input_ids = (
        torch.tensor([[0, 5, 9, 3]] * input_ids.shape[0]) if decoder_input_ids is None else decoder_input_ids
    )
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits


def beam_search(model, input_ids, attention_mask, use_cache=True):
    with torch.no_grad():
        return model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            num_beams=3,
            num_return_sequences=3,
            max_new_tokens=STEPS,
            length_penalty=0.0,
            output_scores=True,
            return_dict_in_generate=True,
            use_cache=use_cache,
        )


# --- 1. exactness, generation, gradients, saving ------------------------------------------------------------------


@pytest.mark.parametrize("prefix_projection, attn_implementation", [(False, "sdpa"), (True, "sdpa"), (False, "eager")])
def test_zero_gates_give_exactly_the_model_without_added_prefixes(prefix_projection, attn_implementation):
    decoder, full = scope_pair(prefix_projection, attn_implementation)
    input_ids, attention_mask = padded_batch()
    assert torch.equal(logits(full, input_ids, attention_mask), logits(decoder, input_ids, attention_mask))
    assert torch.equal(generate(full, input_ids, attention_mask), generate(decoder, input_ids, attention_mask))
    beams_full, beams_decoder = (
        beam_search(full, input_ids, attention_mask),
        beam_search(decoder, input_ids, attention_mask),
    )
    assert torch.equal(beams_full.sequences, beams_decoder.sequences)
    assert torch.equal(beams_full.sequences_scores, beams_decoder.sequences_scores)


def test_disabled_adapter_is_exactly_the_base_model_whatever_the_gates():
    base, _ = make_models()
    _, full = scope_pair()
    set_added_prefixes(full)
    input_ids, attention_mask = padded_batch()
    with full.disable_adapter():
        assert torch.equal(logits(full, input_ids, attention_mask), logits(base, input_ids, attention_mask))
        assert torch.equal(generate(full, input_ids, attention_mask), generate(base, input_ids, attention_mask))
    assert not torch.equal(logits(full, input_ids, attention_mask), logits(base, input_ids, attention_mask))


def test_mt5_zero_gates_exact_and_prefixes_used():
    config = MT5Config(
        vocab_size=48, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=2,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        base = MT5ForConditionalGeneration(config).eval()
        prefix = PrefixTuningConfig(
            task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=4, token_dim=32, num_attention_heads=4, num_layers=2
        )
        models.append(get_peft_model(base, prefix).eval())
    decoder, full = models
    attach(full)
    input_ids, attention_mask = padded_batch()
    assert torch.equal(logits(full, input_ids, attention_mask), logits(decoder, input_ids, attention_mask))
    set_added_prefixes(full)
    assert not torch.allclose(logits(full, input_ids, attention_mask), logits(decoder, input_ids, attention_mask))


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_greedy_generate_equals_manual_loop_with_nonzero_prefixes(use_cache, attn_implementation):
    decoder, full = scope_pair(attn_implementation=attn_implementation)
    set_added_prefixes(full)
    input_ids, attention_mask = padded_batch()
    expected, expected_logits = manual_greedy(full, input_ids, attention_mask, return_logits=True)
    assert not torch.equal(expected, manual_greedy(decoder, input_ids, attention_mask)), (
        "the added prefixes must matter"
    )
    out = generate(
        full, input_ids, attention_mask, use_cache=use_cache, output_logits=True, return_dict_in_generate=True
    )
    assert torch.equal(out.sequences, expected)
    for step, (got, want) in enumerate(zip(out.logits, expected_logits)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=f"logits differ at step {step}")


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_search_scores_are_those_of_the_all_scope_model(use_cache):
    decoder, full = scope_pair(prefix_projection=True)
    set_added_prefixes(full)
    input_ids, attention_mask = padded_batch()
    out = beam_search(full, input_ids, attention_mask, use_cache=use_cache)
    repeat = lambda t: t.repeat_interleave(3, dim=0)  # noqa: E731
    recomputed = sequence_log_probs(full, repeat(input_ids), repeat(attention_mask), out.sequences)
    torch.testing.assert_close(out.sequences_scores, recomputed, atol=1e-4, rtol=1e-4)
    without = sequence_log_probs(decoder, repeat(input_ids), repeat(attention_mask), out.sequences)
    assert not torch.allclose(without, recomputed, atol=1e-2)


@pytest.mark.parametrize("prefix_projection", [False, True])
def test_gradients_reach_every_added_prefix_and_no_frozen_weight(prefix_projection):
    _, full = scope_pair(prefix_projection)
    full.train()
    input_ids, attention_mask = padded_batch()
    labels = torch.tensor([[3, 4, 1]] * 3)

    # Gates at zero: only the gates (and peft's prefix) get a gradient, so training starts by opening them.
    full(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    prefixes = get_all_layer_prefix(full)
    for kind in prefixes.KINDS:
        assert (prefixes.prefix(kind).gate.grad.abs() > 0).all(), kind
    full.zero_grad(set_to_none=True)

    set_added_prefixes(full, gate_std=0.5)
    full(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    trainable = {name for name, p in full.named_parameters() if p.requires_grad}
    added = {name for name in trainable if name.startswith("all_layer_prefix.")}
    if prefix_projection:  # peft's MLP, its last Linear split by layer
        expected = {"embedding.weight", "transform.0.weight", "transform.0.bias", "projections.0.weight",
                    "projections.1.bias", "gate"}  # fmt: skip
    else:
        expected = {"prefix.0", "prefix.1", "gate"}
    for kind in get_all_layer_prefix(full).KINDS:
        assert {name.removeprefix(f"all_layer_prefix.{kind}.") for name in added if kind in name} >= expected, kind
    # Every added parameter (so every layer's prefix and gate) gets a gradient; nothing else but peft's prefix does.
    for name, param in full.named_parameters():
        if name in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    assert trainable == added | {name for name in trainable if name.startswith("prompt_encoder.")}
    for kind in prefixes.KINDS:
        assert (prefixes.prefix(kind).gate.grad.abs() > 0).all(), kind


@pytest.mark.parametrize("prefix_projection", [False, True])
def test_save_load_round_trip_reproduces_logits_and_generation(prefix_projection, tmp_path):
    _, full = scope_pair(prefix_projection)
    set_added_prefixes(full)
    full.save_pretrained(tmp_path)
    adapter_config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert adapter_config["prefix_scope"] == "all" and adapter_config["peft_type"] == "PREFIX_TUNING"
    saved = load_file(tmp_path / WEIGHTS_NAME)
    assert set(saved) == {
        f"{kind}.{name}" for kind in ("encoder_self_attention", "cross_attention") for name in ("prefix", "gate")
    }
    assert saved["encoder_self_attention.prefix"].shape == (
        6,
        2 * 2 * 32,
    )  # flat: tokens x (layers * 2 * heads * d_kv)
    # The run's model card (model_card.py) is the only writer of README.md that speaks of the scope.
    assert "prefix_scope" not in (tmp_path / "README.md").read_text()

    fresh_base, _ = make_models(prefix_projection=prefix_projection)
    loaded = PeftModel.from_pretrained(fresh_base, tmp_path).eval()
    prefixes = get_all_layer_prefix(loaded)
    assert prefixes is not None and not prefixes.encoder_self_attention.projection
    assert not any(p.requires_grad for p in prefixes.parameters())
    input_ids, attention_mask = padded_batch()
    if prefix_projection:  # the MLP is applied at save time: same values up to float rounding
        torch.testing.assert_close(logits(loaded, input_ids, attention_mask), logits(full, input_ids, attention_mask))
    else:
        assert torch.equal(logits(loaded, input_ids, attention_mask), logits(full, input_ids, attention_mask))
    assert torch.equal(generate(loaded, input_ids, attention_mask), manual_greedy(full, input_ids, attention_mask))


def test_decoder_scope_adapter_is_plain_peft(tmp_path):
    decoder, _ = scope_pair()
    decoder.save_pretrained(tmp_path)
    assert "prefix_scope" not in json.loads((tmp_path / "adapter_config.json").read_text())
    assert not (tmp_path / WEIGHTS_NAME).exists()
    fresh_base, _ = make_models()
    loaded = PeftModel.from_pretrained(fresh_base, tmp_path)
    assert get_all_layer_prefix(loaded) is None


def test_plain_peft_loads_only_the_decoder_prefix_and_warns(tmp_path):
    """Without prefix_tuning_utils' wrappers, peft must not apply an `all` adapter silently by half."""
    _, full = scope_pair()
    set_added_prefixes(full)
    full.save_pretrained(tmp_path)
    fresh_base, _ = make_models()
    with all_layer_prefix.disabled(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = PeftConfig.from_pretrained(tmp_path)
        loaded = PeftModel.from_pretrained(fresh_base, tmp_path)
    assert config.peft_type == "PREFIX_TUNING"
    messages = [str(w.message) for w in caught if "prefix_scope" in str(w.message)]
    assert messages and "these are ignored" in messages[0], [str(w.message) for w in caught]
    assert get_all_layer_prefix(loaded) is None
    input_ids, attention_mask = padded_batch()
    get_all_layer_prefix(full).enabled = False
    assert torch.equal(logits(loaded, input_ids, attention_mask), logits(full, input_ids, attention_mask))
    # With the package's wrappers (the default once prefix_tuning_utils is imported) that warning would be wrong.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PeftConfig.from_pretrained(tmp_path)
    assert not any("prefix_scope" in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_plain_peft_save_drops_the_added_prefixes(tmp_path):
    """Why the all_layer_prefix.save patch exists: peft's own save_pretrained writes the decoder prefix only."""
    _, full = scope_pair()
    with patching.disabled("all_layer_prefix.save"):
        full.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert not (tmp_path / WEIGHTS_NAME).exists()
    assert "prefix_scope" not in json.loads((tmp_path / "adapter_config.json").read_text())


def test_adapter_on_the_hub_restores_every_prefix(tmp_path, monkeypatch):
    from tests.fake_hub import FakeHub

    _, full = scope_pair()
    set_added_prefixes(full)
    full.save_pretrained(tmp_path / "adapter")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with FakeHub(hub_cache=tmp_path / "hub_cache") as hub:
        for path in (tmp_path / "adapter").iterdir():
            hub.add_file("me/all-adapter", path.name, path.read_bytes())
        fresh_base, _ = make_models()
        loaded = PeftModel.from_pretrained(fresh_base, "me/all-adapter").eval()
    input_ids, attention_mask = padded_batch()
    assert torch.equal(logits(loaded, input_ids, attention_mask), logits(full, input_ids, attention_mask))


def test_bf16_base_model():
    decoder, full = scope_pair()
    for model in (decoder, full):
        model.get_base_model().to(torch.bfloat16)
    input_ids, attention_mask = padded_batch()
    assert torch.equal(logits(full, input_ids, attention_mask), logits(decoder, input_ids, attention_mask))
    set_added_prefixes(full)
    assert logits(full, input_ids, attention_mask).dtype == torch.bfloat16
    assert torch.equal(
        generate(full, input_ids, attention_mask, use_cache=False), manual_greedy(full, input_ids, attention_mask)
    )
    full.train()
    loss = full(input_ids=input_ids, attention_mask=attention_mask, labels=torch.tensor([[3, 4, 1]] * 3)).loss
    loss.backward()
    gate = get_all_layer_prefix(full).cross_attention.gate
    assert gate.dtype == torch.float32 and torch.isfinite(gate.grad).all() and gate.grad.abs().sum() > 0


def test_bf16_autocast_training_step():
    _, full = scope_pair()
    set_added_prefixes(full, gate_std=0.5)
    full.train()
    input_ids, attention_mask = padded_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = full(input_ids=input_ids, attention_mask=attention_mask, labels=torch.tensor([[3, 4, 1]] * 3)).loss
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in get_all_layer_prefix(full).parameters())


def trainer_rows():
    input_ids, attention_mask = padded_batch()
    return [
        {"input_ids": ids[mask.bool()].tolist(), "labels": [3, 4, 1]} for ids, mask in zip(input_ids, attention_mask)
    ] * 4


def make_trainer(model, output_dir, **overrides):
    args = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=0.1,
        save_strategy="steps",
        save_steps=2,
        report_to="none",
        use_cpu=True,
        seed=0,
        data_seed=0,
    )
    args.update(overrides)
    tokenizer = AutoTokenizer.from_pretrained(REPO / "examples" / "tiny-t5")
    return Seq2SeqTrainer(
        model=model,
        args=Seq2SeqTrainingArguments(**args),
        train_dataset=trainer_rows(),
        data_collator=DataCollatorForSeq2Seq(tokenizer),
    )


def test_trainer_trains_saves_checkpoints_and_resumes(tmp_path):
    _, full = scope_pair()
    prefixes = get_all_layer_prefix(full)
    before = {name: p.detach().clone() for name, p in prefixes.named_parameters()}
    make_trainer(full, tmp_path / "run").train()
    for name, param in prefixes.named_parameters():
        assert not torch.equal(param, before[name]), f"the Trainer did not train {name}"
    checkpoint = tmp_path / "run" / "checkpoint-2"
    assert json.loads((checkpoint / "adapter_config.json").read_text())["prefix_scope"] == "all"
    saved = load_file(checkpoint / WEIGHTS_NAME)
    assert not torch.equal(saved["cross_attention.gate"], torch.zeros_like(saved["cross_attention.gate"]))

    # Resuming (the Trainer calls load_adapter(checkpoint, is_trainable=True)) restores the added prefixes too.
    _, resumed = scope_pair()
    make_trainer(resumed, tmp_path / "resumed").train(resume_from_checkpoint=str(checkpoint))
    for (name, want), got in zip(prefixes.named_parameters(), get_all_layer_prefix(resumed).parameters()):
        torch.testing.assert_close(got, want, msg=f"{name} after resuming differs from the uninterrupted run")


def test_run_script_with_prefix_scope_all(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "quickstart-all"
    trainer = run_main(
        ["recipes/quickstart.yaml", "--output_dir", str(out), "--prefix_scope", "all", "--max_steps", "4",
         "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no"]
    )  # fmt: skip
    for folder in (out, out / "checkpoint-2"):
        assert (folder / WEIGHTS_NAME).is_file() and (folder / "adapter_model.safetensors").is_file(), folder
        assert json.loads((folder / "adapter_config.json").read_text())["prefix_scope"] == "all"
    results = json.loads((out / "all_results.json").read_text())
    assert "eval_accuracy" in results

    # The README's usage snippet (prefix_tuning_utils is imported by this test session) restores everything.

    sentences = ["Acme Corp said its net sales rose 12 percent from a year earlier .", "Fjord Telecom has 3 offices ."]
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(sentences, return_tensors="pt", padding=True)
    model = trainer.model.eval()
    with torch.no_grad():
        expected = tokenizer.batch_decode(model.generate(**batch, max_new_tokens=5), skip_special_tokens=True)
    assert plain_usage_snippet(out, sentences) == expected


# --- refusals -------------------------------------------------------------------------------------------------------


def test_prefix_scope_argument_is_validated():
    assert PrefixArguments().prefix_scope == "decoder"
    assert PrefixArguments(prefix_scope="all").prefix_scope == "all"
    with pytest.raises(ArgumentError, match="--prefix_scope must be"):
        PrefixArguments(prefix_scope="encoder")
    with pytest.raises(ArgumentError, match="--prefix_scope all supports t5, mt5 models, not 'bart'"):
        all_layer_prefix.check_scope_supported(BartConfig(), "all")
    all_layer_prefix.check_scope_supported(BartConfig(), "decoder")


def test_refuses_when_transformers_does_not_call_the_attention_interface(monkeypatch):
    """A transformers version whose T5 attention bypasses the interface must fail loudly, and leave the model as it was."""
    _, model = make_models()

    sdpa = modeling_t5.ALL_ATTENTION_FUNCTIONS["sdpa"]

    class Bypass:  # what T5Attention would see if it no longer dispatched through AttentionInterface
        def get_interface(self, name, default):
            return sdpa

    monkeypatch.setattr(modeling_t5, "ALL_ATTENTION_FUNCTIONS", Bypass())
    with pytest.raises(RuntimeError, match="does not recognise how transformers .* calls T5 attention"):
        attach(model)
    assert get_all_layer_prefix(model) is None
    assert model.get_base_model().config._attn_implementation == "sdpa"


def test_refuses_to_run_when_attention_implementation_is_switched_afterwards():
    _, full = scope_pair()
    full.get_base_model().set_attn_implementation("eager")
    input_ids, attention_mask = padded_batch()
    with pytest.raises(RuntimeError, match="prefixes would be skipped"):
        logits(full, input_ids, attention_mask)
    full.get_base_model().set_attn_implementation("prefix_scope_eager")
    logits(full, input_ids, attention_mask)


def test_refuses_unsupported_setups(tmp_path):
    _, full = scope_pair()
    with pytest.raises(ValueError, match="already has"):
        attach(full)
    decoder, _ = scope_pair()
    with torch.no_grad():
        decoder.prompt_encoder["default"].embedding.weight.add_(1.0)
    decoder.save_pretrained(tmp_path / "decoder")
    full.save_pretrained(tmp_path / "all")
    before = full.prompt_encoder["default"].embedding.weight.detach().clone()
    # Refused before peft loads anything: the model is left as it was.
    with pytest.raises(ValueError, match="is a --prefix_scope decoder adapter"):
        full.load_adapter(tmp_path / "decoder", "default")
    with pytest.raises(ValueError, match="load as the only adapter, named 'default'"):
        full.load_adapter(tmp_path / "all", "second")
    assert torch.equal(full.prompt_encoder["default"].embedding.weight, before)
    assert list(full.peft_config) == ["default"]


# --- 2. learning: all vs decoder on a frozen model trained for another task ---------------------------------------

VOCAB_SYMBOLS = 12  # tokens 2..13; 0 is padding, 1 is end of sequence


def sequence_task_batch(generator, size, task):
    """Sequences of 4-8 symbols; `reverse` or `copy` them (T5-style: input + eos -> target + eos)."""
    inputs = torch.zeros(size, 9, dtype=torch.long)
    labels = torch.full((size, 9), -100, dtype=torch.long)
    for row, length in enumerate(torch.randint(4, 9, (size,), generator=generator).tolist()):
        symbols = torch.randint(2, 2 + VOCAB_SYMBOLS, (length,), generator=generator)
        target = symbols.flip(0) if task == "reverse" else symbols
        inputs[row, :length], inputs[row, length] = symbols, 1
        labels[row, :length], labels[row, length] = target, 1
    return inputs, (inputs != 0).long(), labels


def learning_curves(steps=150, every=25, learning_rate=3e-2, pretrain_steps=300):
    """Train a tiny T5 to reverse, freeze it, prefix-tune it to copy with each scope; eval loss every `every` steps."""
    config = T5Config(
        vocab_size=2 + VOCAB_SYMBOLS, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=2,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, dropout_rate=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    pretrained = T5ForConditionalGeneration(config)
    optimizer = torch.optim.Adam(pretrained.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(pretrain_steps):
        input_ids, attention_mask, labels = sequence_task_batch(generator, 32, "reverse")
        loss = pretrained(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    reverse_loss = loss.item()
    state = pretrained.state_dict()
    eval_batch = sequence_task_batch(torch.Generator().manual_seed(123), 256, "copy")

    def eval_loss(model):
        model.eval()
        with torch.no_grad():
            value = model(input_ids=eval_batch[0], attention_mask=eval_batch[1], labels=eval_batch[2]).loss.item()
        model.train()
        return value

    curves = {}
    for scope in ("decoder", "all"):
        torch.manual_seed(0)
        base = T5ForConditionalGeneration(config)
        base.load_state_dict(state)
        prefix_config = PrefixTuningConfig(
            task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=8, token_dim=32, num_attention_heads=4, num_layers=2
        )
        model = get_peft_model(base, prefix_config)
        if scope == "all":
            attach(model)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
        generator = torch.Generator().manual_seed(2)
        curve = [(0, eval_loss(model))]
        for step in range(1, steps + 1):
            input_ids, attention_mask, labels = sequence_task_batch(generator, 32, "copy")
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % every == 0:
                curve.append((step, eval_loss(model)))
        curves[scope] = curve
    return reverse_loss, curves


@pytest.fixture
def one_torch_thread():
    """Tiny models train several times faster on one thread than on two busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_all_scope_learns_a_new_task_faster_than_decoder_scope(one_torch_thread):
    start = time.perf_counter()
    reverse_loss, curves = learning_curves()
    print(f"\nbase model: reverse-task training loss {reverse_loss:.3f}; copy-task eval loss by prefix-tuning step:")
    for scope, curve in curves.items():
        print(f"  {scope:8s}" + "  ".join(f"{step}:{loss:.3f}" for step, loss in curve))
    print(f"({time.perf_counter() - start:.1f} s)")
    assert reverse_loss < 0.6, "the base model should have learnt to reverse"
    (_, start_all), (_, start_decoder) = curves["all"][0], curves["decoder"][0]
    assert start_all == start_decoder, "with gates at zero both scopes start from the same model"
    final_all, final_decoder = curves["all"][-1][1], curves["decoder"][-1][1]
    assert final_all < 0.75 * final_decoder, curves
    assert all(a < d for (_, a), (_, d) in zip(curves["all"][1:], curves["decoder"][1:])), curves
