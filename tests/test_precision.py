"""--bf16 (prefix_tuning_utils/precision.py): which dtype each part of the model gets in training and answering, the
answers it gives against fp32's, and where it is refused.

A CPU without bf16 kernels (AVX2 only: no AVX512, AVX512-BF16 or AMX) refuses --bf16, and the development machine
may be one. The tests that train or answer in bf16 therefore declare the CPU bf16-capable (the `bf16_cpu` fixture
patches the one probe, `precision.cpu_bf16_support`); nothing else changes: every dtype, loss and probability below
is computed for real, in bf16, by torch's kernels for this CPU.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from prefix_tuning_utils import cli, modeling, precision
from prefix_tuning_utils.answering import LabelScorer
from prefix_tuning_utils.classifier import PrefixClassifier
from prefix_tuning_utils.errors import ArgumentError
from prefix_tuning_utils.input_format import InputFormat
from prefix_tuning_utils.precision import check_bf16_supported, plan_precision, store_frozen_weights
from prefix_tuning_utils.trainer import PrefixTuningTrainer
from tests.conftest import REPO
from tests.helpers import QUICKSTART, TRAIN_ARGS, run_cli, run_main


LABELS = ["negative", "neutral", "positive"]


@pytest.fixture
def bf16_cpu(monkeypatch):
    """This CPU counts as one with bf16 instructions (see the module docstring)."""
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "native")


def adapter_dtypes(folder: Path) -> set[torch.dtype]:
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as handle:
        return {handle.get_tensor(key).dtype for key in handle.keys()}


# --- training: frozen weights in bf16, trainable weights and optimizer state in fp32 ---------------------------------

# name: (base model fixture, flags)
TRAINING_CASES = {
    "t5-prefix": ("model_dir", ["--do_eval", "--predict_with_generate"]),  # evaluation in generate mode too
    "t5-prompt": ("model_dir", ["--tuning_method", "prompt"]),
    "t5-lora": ("model_dir", ["--tuning_method", "lora"]),
    "t5-prefix-all-projection": ("model_dir", ["--prefix_scope", "all", "--prefix_projection"]),
    "llama-prefix": ("tiny_llama_dir", ["--do_eval"]),  # evaluation by label scoring
    "llama-lora": ("tiny_llama_dir", ["--tuning_method", "lora"]),
}


def train_bf16(tmp_path, base, *flags):
    """--bf16 training for 3 steps; returns the trainer and, for each call of the LM head, (in training mode, the
    dtype it computed in)."""
    seen = []
    original_init = PrefixTuningTrainer.__init__

    def init_and_hook(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        head = model.get_output_embeddings()
        head.register_forward_hook(lambda module, args, output: seen.append((module.training, output.dtype)))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PrefixTuningTrainer, "__init__", init_and_hook)
        trainer = run_main(
            [*TRAIN_ARGS, "--model_name_or_path", base, "--do_eval", "false", "--max_steps", "3",
             "--per_device_train_batch_size", "8", "--bf16", "--output_dir", tmp_path, *flags]
        )  # fmt: skip
    return trainer, seen


@pytest.mark.parametrize("name", TRAINING_CASES)
def test_bf16_training_stores_frozen_weights_in_bf16_and_trains_in_fp32(request, tmp_path, bf16_cpu, name):
    fixture, flags = TRAINING_CASES[name]
    base = request.getfixturevalue(fixture)
    trainer, seen = train_bf16(tmp_path, base, *flags)
    assert trainer.args.bf16 and trainer.args.use_cpu and trainer.accelerator.mixed_precision == "bf16"
    params = dict(trainer.model.named_parameters())
    frozen = {n: p for n, p in params.items() if not p.requires_grad}
    trainable = {n: p for n, p in params.items() if p.requires_grad}
    assert frozen and trainable
    assert {p.dtype for p in frozen.values()} == {torch.bfloat16}, "the frozen weights are not stored in bf16"
    assert {p.dtype for p in trainable.values()} == {torch.float32}, "a trainable weight is not fp32"
    # The frozen weights are the whole base model, as saved.
    on_disk = modeling._auto_class("causal" if "llama" in name else "seq2seq").from_pretrained(base)
    assert sum(p.numel() for p in frozen.values()) == sum(p.numel() for p in on_disk.parameters())
    # AdamW's state of every trainable weight in fp32, and the gradients reached it.
    for param in trainable.values():
        state = trainer.optimizer.state[param]
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    assert any(bool(state["exp_avg"].abs().sum() > 0) for state in trainer.optimizer.state.values())
    assert seen and {dtype for _, dtype in seen} == {torch.bfloat16}, "the forward pass did not compute in bf16"
    assert adapter_dtypes(tmp_path) == {torch.float32}  # the adapter is saved in fp32
    results = json.loads((tmp_path / "all_results.json").read_text())
    assert math.isfinite(results["train_loss"])
    if "--do_eval" in flags:
        assert results["eval_samples"] == 17 and math.isfinite(results["eval_loss"])
        assert 0.0 <= results["eval_accuracy"] <= 1.0


def test_bf16_full_fine_tuning_keeps_fp32_master_weights_under_autocast(tmp_path, model_dir, bf16_cpu):
    """Full fine-tuning trains every weight: fp32 master weights and optimizer state, bf16 compute by autocast, in
    training, in evaluation by label scoring and in --do_predict (both answer under the Trainer's autocast)."""
    trainer, seen = train_bf16(
        tmp_path, model_dir, "--tuning_method", "full", "--learning_rate", "1e-3", "--do_eval", "--eval_mode",
        "score", "--do_predict", "--test_file", QUICKSTART, "--max_predict_samples", "8",
    )  # fmt: skip
    params = list(trainer.model.parameters())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in params)
    assert all(state["exp_avg"].dtype == torch.float32 for state in trainer.optimizer.state.values())
    assert {training for training, _ in seen} == {True, False}  # training steps, and answering
    assert {dtype for _, dtype in seen} == {torch.bfloat16}, "training or answering did not compute in bf16"
    assert (tmp_path / "predictions.jsonl").read_text().count("\n") == 8


def test_bf16_encoder_cache_holds_bf16_and_trains_as_the_uncached_run(tmp_path, bf16_cpu):
    """--cache_encoder_outputs --bf16: the encoder runs in bf16 and its output is kept as the model gives it (bf16,
    2 bytes a number: the README's formula); the losses are those of an uncached --bf16 run with the encoder's
    dropout off, to bf16's rounding."""
    from prefix_tuning_utils.encoder_cache import encoder_dropout_off

    argv = [REPO / "recipes" / "quickstart.yaml", "--train_file", QUICKSTART, "--model_name_or_path",
            REPO / "examples" / "tiny-t5", "--max_train_samples", "48", "--num_train_epochs", "2", "--do_eval",
            "false", "--eval_strategy", "no", "--logging_strategy", "steps", "--logging_steps", "1", "--disable_tqdm", "true",
            "--bf16"]  # fmt: skip
    cached = run_main([*argv, "--cache_encoder_outputs", "--output_dir", tmp_path / "cached"])
    cache = cached.encoder_cache
    assert cache.states.dtype == torch.bfloat16
    # The base initialised from the config is saved as initialised (fp32), before its weights are stored in bf16.
    with safe_open(str(tmp_path / "cached" / "base_model" / "model.safetensors"), "pt") as handle:
        assert {handle.get_tensor(key).dtype for key in handle.keys()} == {torch.float32}
    tokens = sum(len(ids) for ids in cached.train_dataset["input_ids"])
    assert cache.nbytes == tokens * cached.model.config.d_model * 2
    original_init = PrefixTuningTrainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        encoder_dropout_off(self.model.get_base_model().get_encoder())

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PrefixTuningTrainer, "__init__", init)
        plain = run_main([*argv, "--output_dir", tmp_path / "plain"])

    def losses(trainer):
        return torch.tensor([e["loss"] for e in trainer.state.log_history if "loss" in e])

    assert len(losses(cached)) == len(losses(plain)) == 12
    # bf16 keeps 8 significant bits: the two runs batch the encoder differently (the cache sorts by length), which
    # may round a value differently: the losses (about 5.5) differed by up to 0.1 % (fp32: 1e-6, test_encoder_cache).
    torch.testing.assert_close(losses(cached), losses(plain), rtol=5e-3, atol=0)


# --- answering: the model in bf16, label scores in fp32 ---------------------------------------------------------------


@pytest.fixture(scope="module")
def quickstart_adapter(tmp_path_factory) -> Path:
    """The quickstart recipe's prefix adapter (a tiny random T5, trained in fp32)."""
    out = tmp_path_factory.mktemp("quickstart")
    run_main(
        [REPO / "recipes" / "quickstart.yaml", "--model_name_or_path", REPO / "examples" / "tiny-t5", "--train_file",
         QUICKSTART, "--output_dir", out, "--do_eval", "false", "--eval_strategy", "no", "--disable_tqdm", "true"]
    )  # fmt: skip
    return out


def predict(adapter: Path, output_dir: Path, *flags) -> tuple[object, list[dict]]:
    trainer = run_main(
        ["--model_name_or_path", adapter, "--test_file", QUICKSTART, "--output_dir", output_dir, "--do_predict",
         "--report_to", "none", "--disable_tqdm", "true", *flags]
    )  # fmt: skip
    with open(output_dir / "predictions.jsonl", encoding="utf-8") as handle:
        return trainer, [json.loads(line) for line in handle]


# The largest difference allowed between a bf16 and an fp32 label probability. bf16 keeps 8 significant bits (each
# value rounded by up to 2^-9 = 0.2 % of itself); on the quickstart adapter the rounding of the activations through
# the layers moves a probability by up to 0.0085 (rounding only the weights, computing in fp32: 0.0017). 0.02 leaves
# room for another CPU's bf16 kernel, which sums its products in another order.
PROBABILITY_TOLERANCE = 0.02


def test_bf16_prediction_gives_fp32_labels_and_probabilities(quickstart_adapter, tmp_path, bf16_cpu):
    _, fp32 = predict(quickstart_adapter, tmp_path / "fp32")
    trainer, bf16 = predict(quickstart_adapter, tmp_path / "bf16", "--bf16")
    base = trainer.model.get_base_model()
    assert {p.dtype for p in base.parameters()} == {torch.bfloat16}, "--bf16 did not load the model in bf16"
    assert [row["line"] for row in bf16] == [row["line"] for row in fp32] and len(fp32) == 162
    p32 = torch.tensor([[row["probabilities"][label] for label in LABELS] for row in fp32], dtype=torch.float64)
    pbf = torch.tensor([[row["probabilities"][label] for label in LABELS] for row in bf16], dtype=torch.float64)
    difference = (pbf - p32).abs().max().item()
    assert 0 < difference <= PROBABILITY_TOLERANCE, difference  # bf16 was used, and changed little
    # A label can change only where fp32's two best probabilities are closer than twice the tolerance (each moves by
    # at most the tolerance); everywhere else bf16 must give fp32's label. That is most rows of this model, whose
    # answers are close to even (a tiny random T5): the rows left out are near-ties.
    top = p32.topk(2, dim=1).values
    decided = (top[:, 0] - top[:, 1]) > 2 * PROBABILITY_TOLERANCE
    assert decided.sum() >= 140, int(decided.sum())
    labels32, labelsbf = [row["label"] for row in fp32], [row["label"] for row in bf16]
    assert [a for a, keep in zip(labels32, decided) if keep] == [b for b, keep in zip(labelsbf, decided) if keep]
    # The API with dtype="bfloat16" is the same path: given the batches --do_predict formed (sorted by length, 8 at a
    # time; in bf16 another padding may round differently), the labels and probabilities of predictions.jsonl.
    order = sorted(range(len(bf16)), key=lambda i: len(bf16[i]["text"]))
    classify = PrefixClassifier.from_pretrained(str(quickstart_adapter), dtype="bfloat16", batch_size=8)
    answers = classify([bf16[i]["text"] for i in order], top_k=None)
    api = torch.tensor([[{a["label"]: a["score"] for a in answer}[label] for label in LABELS] for answer in answers])
    assert [answer[0]["label"] for answer in answers] == [labelsbf[i] for i in order]
    torch.testing.assert_close(api.double(), pbf[order], rtol=0, atol=1e-6)


@pytest.mark.parametrize("task", ["seq2seq", "causal"])
def test_label_scores_of_a_bf16_model_are_summed_in_fp32(task, tiny_t5_dir, tiny_llama_dir, tokenizer):
    """Scores that went through bf16 would all be bf16 numbers (8 significant bits); summed in fp32 after an fp32
    log-softmax, almost none is. And they are the fp32 model's within bf16's rounding."""
    folder = tiny_t5_dir if task == "seq2seq" else tiny_llama_dir
    auto = modeling._auto_class(task)
    texts = [line.rpartition("@")[0] for line in QUICKSTART.read_text(encoding="utf-8").splitlines()[:16]]
    scores = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = auto.from_pretrained(folder, dtype=dtype).eval()
        scores[dtype] = LabelScorer(model, tokenizer, LABELS, InputFormat(task)).log_scores(texts)
    bf16 = scores[torch.bfloat16]
    assert bf16.dtype == torch.float32
    representable = bf16 == bf16.to(torch.bfloat16).float()
    assert representable.float().mean() < 0.2, "the label scores were computed in bf16"
    torch.testing.assert_close(bf16, scores[torch.float32], rtol=0.02, atol=0.05)


def test_seq2seq_label_scores_are_fp32_log_softmax_of_the_bf16_logits(tiny_t5_dir, tokenizer):
    """Each label's score, recomputed in float64 from the very bf16 logits the model gave the scorer (the start
    step's, then each label's next steps): equal to 1e-5, where a log-softmax taken in bf16 would be off by about
    1e-2 (a log-probability near -5 has a bf16 spacing of 0.03)."""
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir, dtype=torch.bfloat16).eval()
    logits = []
    model.lm_head.register_forward_hook(lambda module, args, output: logits.append(output.detach()))
    texts = [line.rpartition("@")[0] for line in QUICKSTART.read_text(encoding="utf-8").splitlines()[:6]]
    got = LabelScorer(model, tokenizer, LABELS, InputFormat("seq2seq")).log_scores(texts)
    answers = tokenizer(text_target=LABELS)["input_ids"]  # [word, </s>] each, by the tokenizer itself
    first, rest = logits  # the start step of every text; then one row per text and label (b * 3 + k)
    assert first.dtype == rest.dtype == torch.bfloat16 and rest.shape[0] == len(texts) * len(LABELS)
    expected = torch.zeros(len(texts), len(LABELS), dtype=torch.float64)
    for b in range(len(texts)):
        for k, answer in enumerate(answers):
            expected[b, k] = torch.log_softmax(first[b, -1].double(), dim=-1)[answer[0]]
            for j, token in enumerate(answer[1:]):
                expected[b, k] += torch.log_softmax(rest[b * len(LABELS) + k, j].double(), dim=-1)[token]
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)


def test_causal_label_scores_are_fp32_log_softmax_of_the_bf16_logits(tiny_llama_dir, tokenizer):
    """The same for a decoder-only model, one text at a time: the logits after the prompt's last token, then each
    label's continuation."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16).eval()
    logits = []
    model.lm_head.register_forward_hook(lambda module, args, output: logits.append(output.detach()))
    scorer = LabelScorer(model, tokenizer, LABELS, InputFormat("causal"))
    # " <label>" and end-of-sequence, by the tokenizer itself
    answers = [ids + [tokenizer.eos_token_id] for ids in tokenizer([" " + label for label in LABELS],
                                                                      add_special_tokens=False)["input_ids"]]  # fmt: skip
    for text in [line.rpartition("@")[0] for line in QUICKSTART.read_text(encoding="utf-8").splitlines()[:4]]:
        logits.clear()
        got = scorer.log_scores([text])[0]
        first, rest = logits  # the prompt (its last position), then one row per label
        assert first.dtype == rest.dtype == torch.bfloat16 and rest.shape[0] == len(LABELS)
        expected = torch.zeros(len(LABELS), dtype=torch.float64)
        for k, answer in enumerate(answers):
            expected[k] = torch.log_softmax(first[0, -1].double(), dim=-1)[answer[0]]
            for j, token in enumerate(answer[1:]):
                expected[k] += torch.log_softmax(rest[k, j].double(), dim=-1)[token]
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)


def test_answers_are_computed_under_autocast_where_the_weights_stay_fp32(tmp_path, model_dir, monkeypatch):
    """Where the weights stay fp32 under --bf16 (a GPU, or full fine-tuning), evaluation by label scoring and
    --do_predict answer under the Trainer's autocast, every call of the model: here a prefix run given the GPU's plan
    (fp32 weights, autocast) on this CPU."""
    monkeypatch.setattr(cli, "plan_precision", lambda bf16, device, trains, method: precision.Precision(True, device))
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "native")
    trainer, seen = train_bf16(
        tmp_path, model_dir, "--do_eval", "--eval_mode", "score", "--do_predict", "--test_file", QUICKSTART,
        "--max_predict_samples", "8",
    )  # fmt: skip
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    answering = [dtype for training, dtype in seen if not training]
    assert answering and set(answering) == {torch.bfloat16}, answering
    assert (tmp_path / "predictions.jsonl").read_text().count("\n") == 8


# --- where bf16 is refused -----------------------------------------------------------------------------------------


def test_bf16_is_refused_in_one_line_on_a_cpu_without_bf16_kernels(tmp_path, model_dir, capsys, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "none")
    loaded = []
    monkeypatch.setattr(cli, "load_base_model", lambda *args, **kwargs: loaded.append(1))
    out = tmp_path / "out"
    code, err = run_cli([*TRAIN_ARGS, "--model_name_or_path", model_dir, "--bf16", "--output_dir", out], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: --bf16: this CPU") and "drop --bf16" in lines[-1], err
    assert "Traceback" not in err and not loaded and not out.exists()
    # bf16 from an accelerate config (mixed_precision: bf16) without --bf16: refused too, naming the setting.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    code, err = run_cli([*TRAIN_ARGS, "--model_name_or_path", model_dir, "--output_dir", out], capsys)
    assert code == 2 and "error: mixed_precision bf16 (accelerate config): this CPU" in err and not loaded


def test_bf16_is_refused_on_a_gpu_without_bf16(tiny_t5_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(ArgumentError, match=r"--bf16: the GPU Tesla V100-SXM2-16GB \(compute capability 7\.0\)"):
        check_bf16_supported("cuda")
    # The API refuses it before loading anything.
    monkeypatch.setattr("prefix_tuning_utils.classifier.find_trained_model", lambda *a: pytest.fail("loaded"))
    with pytest.raises(ArgumentError, match="dtype bfloat16: the GPU Tesla V100"):
        PrefixClassifier.from_pretrained(str(tiny_t5_dir), device="cuda", dtype="bfloat16")


def test_api_refuses_bf16_on_a_cpu_without_bf16_kernels(tiny_t5_dir, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "none")
    monkeypatch.setattr("prefix_tuning_utils.classifier.find_trained_model", lambda *a: pytest.fail("loaded"))
    with pytest.raises(ArgumentError, match="dtype bfloat16: this CPU .* leave dtype out"):
        PrefixClassifier.from_pretrained(str(tiny_t5_dir), device="cpu", dtype=torch.bfloat16)


def test_emulated_bf16_warns_and_goes_on(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "emulated")
    with caplog.at_level(logging.WARNING, logger="prefix_tuning_utils.precision"):
        check_bf16_supported("cpu")
    assert "oneDNN emulates bf16" in caplog.text


@pytest.mark.parametrize(
    "onednn, avx512_bf16, amx, machine, expected",
    [
        (False, False, False, "x86_64", "none"),  # AVX2 only: torch's generic bf16 kernels
        (True, False, False, "x86_64", "emulated"),  # AVX512 without BF16: oneDNN emulates
        (True, True, False, "x86_64", "native"),  # AVX512-BF16
        (True, False, True, "x86_64", "native"),  # AMX
        (True, False, False, "aarch64", "native"),  # oneDNN's bf16 on ARM is the BF16 extension
        (False, False, False, "aarch64", "none"),
    ],
)
def test_cpu_bf16_support_from_the_cpu_features(monkeypatch, onednn, avx512_bf16, amx, machine, expected):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(precision.platform, "machine", lambda: machine)
    assert precision.cpu_bf16_support() == expected


# --- the plan of each run --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bf16, device, trains, method, load, frozen, pad",
    [
        (False, "cpu", True, "prefix", None, None, None),
        (True, "cpu", True, "prefix", None, torch.bfloat16, None),  # frozen weights stored in bf16
        (True, "cpu", True, "lora", None, torch.bfloat16, None),
        (True, "cpu", True, "full", None, None, None),  # fp32 master weights under autocast
        (True, "cuda", True, "prefix", None, None, 8),  # a GPU: autocast as before, batches padded to 8
        (True, "cpu", False, "prefix", torch.bfloat16, None, None),  # answering: loaded in bf16
        (True, "cuda", False, "full", torch.bfloat16, None, 8),
        (False, "cuda", False, "prefix", None, None, None),
    ],
)
def test_plan_precision(bf16, device, trains, method, load, frozen, pad):
    plan = plan_precision(bf16, device, trains, method)
    assert (plan.load_dtype, plan.frozen_dtype, plan.pad_to_multiple_of) == (load, frozen, pad)


def test_store_frozen_weights_casts_each_frozen_weight_once(tiny_t5_dir):
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir, tie_word_embeddings=True)
    model.lm_head.weight.requires_grad_(False)
    for param in model.decoder.final_layer_norm.parameters():
        param.requires_grad_(True)
    model.shared.weight.requires_grad_(False)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    expected = sum(p.numel() for p in frozen)  # parameters() lists a tied weight once
    assert store_frozen_weights(model, torch.bfloat16) == expected
    assert all(p.dtype == torch.bfloat16 for p in frozen)
    assert model.decoder.final_layer_norm.weight.dtype == torch.float32
    assert model.lm_head.weight is model.shared.weight  # still tied
    assert store_frozen_weights(model, torch.bfloat16) == 0 and store_frozen_weights(model, None) == 0
