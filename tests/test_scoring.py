"""Label scoring reads each input once and continues every label from its cache: the scores must equal those of
plain full forward passes, one per sentence and label (the original rank classification), for every adapter.

The references below run the model on one unpadded sentence followed by one label word at a time, so they share
nothing with the batched path: no padding, no cache, no shared first step, no position ids of our own.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
from transformers import LlamaForCausalLM, T5ForConditionalGeneration

from prefix_tuning_utils import all_layer_prefix
from prefix_tuning_utils.answering import LabelScorer
from prefix_tuning_utils.arguments import DataTrainingArguments
from prefix_tuning_utils.input_format import InputFormat
from tests.conftest import REPO, tiny_llama_config, tiny_t5_config


QUICKSTART = REPO / "examples" / "quickstart.txt"
# Label words of different lengths in tokens (with end-of-sequence: 3, 2, 3), so the answers are padded too.
LABELS = ["very negative", "neutral", "not positive"]
# Sentences of very different lengths, so the inputs of one batch are padded.
TEXTS = [
    "Profit rose .",
    "Operating profit fell to EUR 1.2 mn from EUR 3.4 mn in the corresponding period of the previous year , "
    "the company said .",
    "Sales were flat .",
    "The company expects its net sales in 2008 to increase by 10 % from 2007 .",
    "Shares fell .",
]
METHODS = ["none", "prefix", "prefix_projection", "prompt", "lora"]


def _scale_weights(model: torch.nn.Module, std: float) -> None:
    """Larger random weights than the default init, so that the label scores differ clearly."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, std)


def _peft_config(method: str, task_type: TaskType, **prefix_shape):
    if method == "lora":
        return LoraConfig(task_type=task_type, r=4, init_lora_weights=False)
    if method == "prompt":
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=4)
    projection = dict(prefix_projection=True, encoder_hidden_size=16) if method == "prefix_projection" else {}
    return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=4, **prefix_shape, **projection)


def _adapted(base: torch.nn.Module, method: str, task_type: TaskType, **prefix_shape) -> torch.nn.Module:
    if method == "none":
        return base.eval()
    torch.manual_seed(2)
    model = get_peft_model(base, _peft_config(method, task_type, **prefix_shape))
    if method != "lora":
        with torch.no_grad():  # a prefix or prompt far from its init, so that it changes the answers
            for param in model.prompt_encoder.parameters():
                param.normal_(0.0, 1.0)
    return model.eval()


def _answer_log_prob(logits: torch.Tensor, answer: list[int]) -> float:
    """Summed log-probability of `answer`, whose tokens are predicted by the last len(answer) rows of `logits`."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return float(sum(log_probs[j, token] for j, token in enumerate(answer)))


@torch.no_grad()
def seq2seq_reference(model, tokenizer, data_args, texts: list[str]) -> torch.Tensor:
    """One whole forward with `labels=` per sentence and label."""
    answers = tokenizer(text_target=LABELS)["input_ids"]
    rows = []
    for text in texts:
        ids = tokenizer([data_args.source_prefix + text], return_tensors="pt")["input_ids"]
        row = []
        for answer in answers:
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([answer])).logits
            row.append(_answer_log_prob(logits[0], answer))
        rows.append(row)
    return torch.tensor(rows)


@torch.no_grad()
def causal_reference(model, tokenizer, data_args, texts: list[str], answers: list[list[int]]) -> torch.Tensor:
    """One whole forward of prompt + answer per sentence and label, unpadded."""
    rows = []
    for text in texts:
        prompt = tokenizer(data_args.prompt_template.replace("{text}", text))["input_ids"]
        row = []
        for answer in answers:
            ids = torch.tensor([prompt + answer])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
            # The answer's tokens are predicted by the logits just before them (prompt tuning adds rows in front).
            row.append(_answer_log_prob(logits[-len(answer) - 1 : -1], answer))
        rows.append(row)
    return torch.tensor(rows)


# --- seq2seq: one encoder pass and one shared first decoder step, then all labels in one decoder call ---


@pytest.fixture(scope="module")
def t5_base_state(tokenizer):
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(tiny_t5_config(len(tokenizer)))
    _scale_weights(model, 0.3)
    return model.state_dict()


def _t5(tokenizer, state) -> T5ForConditionalGeneration:
    model = T5ForConditionalGeneration(tiny_t5_config(len(tokenizer)))
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("method", [*METHODS, "prefix_scope_all"])
def test_seq2seq_scores_equal_one_forward_per_label(tokenizer, t5_base_state, method):
    shape = dict(num_layers=2, token_dim=32, num_attention_heads=4)
    model = _adapted(_t5(tokenizer, t5_base_state), method.replace("_scope_all", ""), TaskType.SEQ_2_SEQ_LM, **shape)
    if method == "prefix_scope_all":
        added = all_layer_prefix.attach(model, trainable=False)
        with torch.no_grad():  # open the gates (zero at the start), so the added prefixes take part
            for prefix in (added.encoder_self_attention, added.cross_attention):
                prefix.gate.normal_(0.0, 1.0)
    data_args = DataTrainingArguments(test_file=str(QUICKSTART), source_prefix="sentiment : ")
    scorer = LabelScorer(model, tokenizer, LABELS, InputFormat.from_args(data_args, "seq2seq"))
    assert len({len(answer) for answer in scorer.answers}) > 1, "the label words should differ in length"

    got = scorer.log_scores(TEXTS)
    expected = seq2seq_reference(model, tokenizer, data_args, TEXTS)
    assert got.shape == (len(TEXTS), len(LABELS))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # The check means something: the labels' scores differ, and the adapter changes them.
    assert (expected.max(dim=1).values - expected.min(dim=1).values).min() > 1e-2
    if method != "none":
        plain = seq2seq_reference(_t5(tokenizer, t5_base_state).eval(), tokenizer, data_args, TEXTS)
        assert (plain - expected).abs().max() > 1e-2, "the adapter should change the scores"


def test_seq2seq_scores_do_not_depend_on_the_batch(tokenizer, t5_base_state):
    model = _adapted(_t5(tokenizer, t5_base_state), "prefix", TaskType.SEQ_2_SEQ_LM, num_layers=2, token_dim=32,
                     num_attention_heads=4)  # fmt: skip
    scorer = LabelScorer(
        model, tokenizer, LABELS, InputFormat.from_args(DataTrainingArguments(test_file=str(QUICKSTART)), "seq2seq")
    )
    together = scorer.log_scores(TEXTS)
    alone = torch.cat([scorer.log_scores([text]) for text in TEXTS])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    assert not model.training


# --- decoder-only: the prompt once, every label continued from its cache ---


@pytest.fixture(scope="module")
def llama_base_state(tokenizer):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), tie_word_embeddings=False))
    _scale_weights(model, 0.3)
    return model.state_dict()


def _llama(tokenizer, state) -> LlamaForCausalLM:
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), tie_word_embeddings=False))
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("method", METHODS)
def test_causal_scores_equal_one_forward_per_label(tokenizer, llama_base_state, method):
    model = _adapted(_llama(tokenizer, llama_base_state), method, TaskType.CAUSAL_LM)
    config = model.config
    assert config.num_key_value_heads < config.num_attention_heads, "grouped-query attention, as in SmolLM2"
    data_args = DataTrainingArguments(test_file=str(QUICKSTART), prompt_template="Sentence : {text} Sentiment :")
    scorer = LabelScorer(model, tokenizer, LABELS, InputFormat.from_args(data_args, "causal"))
    assert len({len(answer) for answer in scorer.answers}) > 1, "the answers should differ in length"

    got = scorer.log_scores(TEXTS)
    expected = causal_reference(model, tokenizer, data_args, TEXTS, scorer.answers)
    assert got.shape == (len(TEXTS), len(LABELS))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert (expected.max(dim=1).values - expected.min(dim=1).values).min() > 1e-2
    if method != "none":
        plain = causal_reference(_llama(tokenizer, llama_base_state).eval(), tokenizer, data_args, TEXTS,
                                 scorer.answers)  # fmt: skip
        assert (plain - expected).abs().max() > 1e-2, "the adapter should change the scores"
    assert not model.training


def test_probabilities_are_the_softmax_of_each_sentence_over_the_labels(tokenizer, t5_base_state):
    """`probabilities` (what --do_predict writes and the API answers): each sentence's label scores made into a
    distribution over the labels, computed here by hand from the reference scores."""
    model = _t5(tokenizer, t5_base_state).eval()
    data_args = DataTrainingArguments(test_file=str(QUICKSTART))
    scorer = LabelScorer(model, tokenizer, LABELS, InputFormat.from_args(data_args, "seq2seq"))
    texts = TEXTS[:3]
    got = scorer.probabilities(texts)
    reference = seq2seq_reference(model, tokenizer, data_args, texts).tolist()
    expected = [[math.exp(s) / sum(math.exp(t) for t in row) for s in row] for row in reference]
    assert got.shape == (3, 3)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=1e-5)
    assert max(max(row) for row in expected) > 0.4 and min(min(row) for row in expected) < 0.3  # not uniform


def test_each_row_is_formatted_and_truncated_as_its_adapter_was_trained(tokenizer, t5_base_state):
    """With a bank, row i is read as adapter i was trained (its --source_prefix, its --max_source_length), the rows
    of the base model as the scorer's own format; the expected ids tokenize each sentence alone."""
    formats = {
        "prefixed": InputFormat("seq2seq", source_prefix="sentiment : "),
        "short": InputFormat("seq2seq", max_source_length=4),
        "plain": InputFormat("seq2seq"),
    }
    bank = SimpleNamespace(seq2seq=True, adapter=lambda name: SimpleNamespace(input_format=formats[name]))
    scorer = LabelScorer(_t5(tokenizer, t5_base_state), tokenizer, LABELS, InputFormat("seq2seq", "base : "), bank)
    texts = [TEXTS[1], TEXTS[1], TEXTS[0]]
    batch = scorer._encode(texts, adapters=["prefixed", "short", None])
    expected = [
        tokenizer("sentiment : " + TEXTS[1])["input_ids"],
        tokenizer(TEXTS[1])["input_ids"][:3] + [tokenizer.eos_token_id],  # 4 tokens, the last one end-of-sequence
        tokenizer("base : " + TEXTS[0])["input_ids"],
    ]
    width = max(len(ids) for ids in expected)
    assert batch["input_ids"].tolist() == [ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids in expected]
    assert batch["attention_mask"].tolist() == [[1] * len(ids) + [0] * (width - len(ids)) for ids in expected]
    assert tokenizer.padding_side == "right"
    same = scorer._encode(texts[:2], adapters=["short", "short"])  # one format for the batch: one tokenizer call
    assert same["input_ids"].tolist() == [expected[1], expected[1]]
    full = tokenizer(TEXTS[1])["input_ids"]
    mixed = scorer._encode(texts[:2], adapters=["plain", "short"])  # the same prefix, another --max_source_length
    assert mixed["input_ids"].tolist() == [full, expected[1] + [tokenizer.pad_token_id] * (len(full) - 4)]
    with pytest.raises(ValueError, match=r"^2 adapters for 3 texts: give one adapter per text\.$"):
        scorer.log_scores(texts, adapters=["short", None])
    alone = LabelScorer(scorer.model, tokenizer, LABELS, InputFormat("seq2seq"))
    with pytest.raises(ValueError, match=r"^adapters= needs a scorer built on an AdapterBank \(several adapters of"):
        alone.log_scores(texts[:1], adapters=["short"])
    with pytest.raises(ValueError, match=r"^The adapter bank is for a seq2seq model, the input format for causal\.$"):
        LabelScorer(scorer.model, tokenizer, LABELS, InputFormat("causal"), bank)
