"""The stacked tables of an adapter bank (prefix_tuning_utils/answering/bank.py), against tensors written out by
hand: which rows of which table each batch row reads, the left padding and its mask, and what a bank refuses.

That a mixed batch then answers every row as its adapter alone would is tests/test_mixed_adapters.py (real models);
these pin the bookkeeping in between, with no model.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from prefix_tuning_utils.answering.bank import AdapterBank, AdapterTables, BankedAdapter, bankable
from prefix_tuning_utils.input_format import InputFormat


SEQ2SEQ = SimpleNamespace(is_encoder_decoder=True)
PREFIX_SHAPE = {"num_layers": 1, "num_attention_heads": 2, "token_dim": 4}  # tables 1 x 2 x 4 = 8 wide


def adapter(name: str, kind: str, tokens: int, scope: str | None = None) -> BankedAdapter:
    return BankedAdapter(name, f"runs/{name}", "main", kind, scope, tokens, ("bad", "good"), InputFormat("seq2seq"))


def table(tokens: int, width: int, start: float) -> torch.Tensor:
    """Distinct values: start, start + 1, ... row by row."""
    return torch.arange(tokens * width, dtype=torch.float32).view(tokens, width) + start


def mixed_bank() -> AdapterBank:
    """a: a prefix of 2 tokens, b: a prefix of 3, p: a prompt of 2 tokens (5 wide)."""
    adapters = [adapter("a", "prefix", 2, "decoder"), adapter("b", "prefix", 3, "decoder"), adapter("p", "prompt", 2)]
    tables = [AdapterTables(prefix=table(2, 8, 100)), AdapterTables(prefix=table(3, 8, 200)),
              AdapterTables(prompt=table(2, 5, 300))]  # fmt: skip
    configs = [dict(PREFIX_SHAPE), dict(PREFIX_SHAPE), {"num_virtual_tokens": 2}]
    return AdapterBank.from_tables(adapters, tables, SEQ2SEQ, configs)


def test_tables_are_stacked_right_aligned_with_the_base_model_last():
    bank = mixed_bank()
    zeros8, zeros5 = torch.zeros(1, 8), torch.zeros(1, 5)
    expected_prefix = torch.stack([
        torch.cat([zeros8, table(2, 8, 100)]),  # 2 of 3 slots: padded on the left
        table(3, 8, 200),
        torch.zeros(3, 8),  # the prompt adapter has no prefix
        torch.zeros(3, 8),  # the base model
    ])  # fmt: skip
    assert torch.equal(bank.tensors["prefix"], expected_prefix)
    assert bank.tensors["prefix_mask"].tolist() == [[0, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]]
    assert bank.tensors["prefix_mask"].dtype == torch.long
    expected_prompt = torch.stack([torch.cat([zeros5, zeros5]), torch.cat([zeros5, zeros5]), table(2, 5, 300),
                                   torch.cat([zeros5, zeros5])])  # fmt: skip
    assert torch.equal(bank.tensors["prompt"], expected_prompt)
    assert bank.tensors["prompt_mask"].tolist() == [[0, 0], [0, 0], [1, 1], [0, 0]]
    assert bank.shapes == {"num_layers": 1, "heads": 2, "head_dim": 2}
    assert sorted(bank.tensors) == ["prefix", "prefix_mask", "prompt", "prompt_mask"]
    assert (bank.base_index, len(bank), bank.names, bank.seq2seq) == (3, 3, ["a", "b", "p"], True)
    assert "p" in bank and "z" not in bank and bank.adapter("b").num_virtual_tokens == 3


def test_a_batch_reads_each_rows_own_tables():
    bank = mixed_bank()
    rows = bank.rows(["b", None, "a", "p", "b"])
    assert rows.tolist() == [1, 3, 0, 2, 1] and rows.dtype == torch.long
    virtual = bank.virtual_tokens(rows)
    assert torch.equal(virtual.tensors["prefix"][0], table(3, 8, 200))
    assert torch.equal(virtual.tensors["prefix"][1], torch.zeros(3, 8))
    assert torch.equal(virtual.tensors["prefix"][2, 1:], table(2, 8, 100))
    assert torch.equal(virtual.prompt[3], table(2, 5, 300))
    assert virtual.prefix_mask.tolist() == [[1, 1, 1], [0, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1]]
    assert virtual.prompt_mask.tolist() == [[0, 0], [0, 0], [0, 0], [1, 1], [0, 0]]
    assert (virtual.width("prefix"), virtual.width("prompt")) == (3, 2)
    twice = virtual.repeated(2)
    assert twice.rows.tolist() == [1, 1, 3, 3, 0, 0, 2, 2, 1, 1]
    assert (
        twice.prefix_mask.tolist()
        == [[1, 1, 1]] * 2 + [[0, 0, 0]] * 2 + [[0, 1, 1]] * 2 + [[0, 0, 0]] * 2 + [[1, 1, 1]] * 2
    )
    assert torch.equal(twice.tensors["prompt"][7], table(2, 5, 300))
    assert virtual.repeated(1) is virtual
    with pytest.raises(KeyError, match=r"Unknown adapter 'z'; this bank has a, b, p\."):
        bank.rows(["a", "z", "y"])


def test_a_bank_of_prompts_only_has_no_prefix():
    adapters = [adapter("p", "prompt", 3), adapter("q", "prompt", 1)]
    bank = AdapterBank.from_tables(
        adapters, [AdapterTables(prompt=table(3, 5, 0)), AdapterTables(prompt=table(1, 5, 50))], SEQ2SEQ, [{}, {}]
    )
    assert sorted(bank.tensors) == ["prompt", "prompt_mask"] and bank.shapes == {}
    virtual = bank.virtual_tokens(bank.rows(["q", None]))
    assert virtual.prompt_mask.tolist() == [[0, 0, 1], [0, 0, 0]]
    assert torch.equal(virtual.prompt[0], torch.cat([torch.zeros(2, 5), table(1, 5, 50)]))
    assert (virtual.width("prefix"), virtual.prefix_mask, virtual.cache()) == (0, None, None)


ALL_SCOPE_WIDTH = 2 * 2 * 2 * 3  # layers x (key, value) x heads x head_dim


def all_scope_bank() -> AdapterBank:
    """plain: a decoder prefix of 2 tokens; all: a prefix of 2 tokens and, per attention kind, an all-scope prefix
    of 2 tokens over 2 layers of 2 heads of 3 dimensions, and gates (layers x heads)."""
    scope = {}
    for number, kind in enumerate(("encoder_self_attention", "cross_attention")):
        scope[f"{kind}.prefix"] = table(2, ALL_SCOPE_WIDTH, 1000 * (number + 1))
        scope[f"{kind}.gate"] = torch.tensor([[0.5, -0.5], [1.5, 2.5]]) + number
    adapters = [adapter("plain", "prefix", 2, "decoder"), adapter("all", "prefix", 2, "all")]
    tables = [AdapterTables(prefix=table(2, 8, 0)), AdapterTables(prefix=table(2, 8, 20), all_scope=scope)]
    return AdapterBank.from_tables(adapters, tables, SEQ2SEQ, [dict(PREFIX_SHAPE), dict(PREFIX_SHAPE)])


def test_all_scope_prefixes_and_gates_are_stacked_with_zero_gates_elsewhere():
    """--prefix_scope all: per attention kind a prefix (tokens x layers * 2 * heads * head_dim) and gates (layers x
    heads); the adapters without one, and the base model, get no slots and zero gates."""
    width = ALL_SCOPE_WIDTH
    bank = all_scope_bank()
    assert bank.has_all_scope
    assert bank.shapes == {"num_layers": 1, "heads": 2, "head_dim": 2, "all_scope_heads": 2, "all_scope_head_dim": 3}
    for number, kind in enumerate(("encoder_self_attention", "cross_attention")):
        assert torch.equal(bank.tensors[f"{kind}.prefix"][1], table(2, width, 1000 * (number + 1)))
        assert torch.equal(bank.tensors[f"{kind}.prefix"][0], torch.zeros(2, width))
        assert bank.tensors[f"{kind}.mask"].tolist() == [[0, 0], [1, 1], [0, 0]]
        gates = bank.tensors[f"{kind}.gate"]
        assert gates.shape == (3, 2, 2)
        assert torch.equal(gates[1], torch.tensor([[0.5, -0.5], [1.5, 2.5]]) + number)
        assert not gates[0].any() and not gates[2].any()


def test_what_a_bank_refuses():
    with pytest.raises(ValueError, match=r"^An adapter bank needs at least one adapter\.$"):
        AdapterBank.from_tables([], [], SEQ2SEQ, [])
    twins = [adapter("a", "prompt", 1), adapter("a", "prompt", 1)]
    with pytest.raises(ValueError, match=r"^Adapter names must be distinct, got \['a', 'a'\]\.$"):
        AdapterBank.from_tables(twins, [AdapterTables(prompt=table(1, 5, 0))] * 2, SEQ2SEQ, [{}, {}])
    other = {"num_layers": 1, "num_attention_heads": 4, "token_dim": 4}
    with pytest.raises(ValueError) as error:
        AdapterBank.from_tables(
            [adapter("a", "prefix", 2, "decoder"), adapter("p", "prompt", 1), adapter("b", "prefix", 2, "decoder")],
            [AdapterTables(prefix=table(2, 8, 0)), AdapterTables(prompt=table(1, 5, 0)),
             AdapterTables(prefix=table(2, 8, 0))],
            SEQ2SEQ, [dict(PREFIX_SHAPE), {}, other],
        )  # fmt: skip
    assert str(error.value) == (
        "Adapter 'b' has a prefix of another shape (num_layers 1, num_attention_heads 4, token_dim 4) than the others "
        "(num_layers 1, num_attention_heads 2, token_dim 4): not the same base model."
    )


@pytest.mark.parametrize(
    "peft_type, expected",
    [("PREFIX_TUNING", True), ("PROMPT_TUNING", True), ("LORA", False), ("P_TUNING", False), (None, False)],
)
def test_only_adapters_of_virtual_tokens_are_bankable(peft_type, expected):
    assert bankable({} if peft_type is None else {"peft_type": peft_type}) is expected


def test_all_scope_keys_values_and_gates_of_a_layer_follow_the_rows():
    """One layer's all-scope keys and values (its slice of the table, split into key / value, heads, head_dim), its
    gates and key mask, for the batch's rows; repeated row by row when the model runs each row several times."""
    bank = all_scope_bank()
    virtual = bank.virtual_tokens(bank.rows(["all", None, "plain"]))
    key, value, gate, mask = virtual.all_scope("cross_attention", 1, 3)
    layer1 = table(2, ALL_SCOPE_WIDTH, 2000)[:, 12:24].reshape(2, 2, 2, 3)  # tokens, (key, value), heads, head_dim
    assert key.shape == value.shape == (3, 2, 2, 3)  # rows, heads, tokens, head_dim
    assert torch.equal(key[0], layer1[:, 0].transpose(0, 1)) and torch.equal(value[0], layer1[:, 1].transpose(0, 1))
    assert not key[1:].any() and not value[1:].any()
    assert torch.equal(gate, torch.tensor([[2.5, 3.5], [0.0, 0.0], [0.0, 0.0]]))
    assert mask.tolist() == [[True, True], [False, False], [False, False]]
    for times in (2, 3):  # two label words, or two beams, per row; and three
        key_n, value_n, gate_n, mask_n = virtual.all_scope("cross_attention", 1, 3 * times)
        assert torch.equal(key_n, key.repeat_interleave(times, dim=0))
        assert torch.equal(value_n, value.repeat_interleave(times, dim=0))
        assert torch.equal(gate_n, gate.repeat_interleave(times, dim=0))
        assert mask_n.tolist() == [row for row in mask.tolist() for _ in range(times)]


def test_to_casts_the_tables_and_keeps_masks_integer_and_gates_float32():
    """`to(device, dtype)`: the prefix and prompt tables take the model's dtype (peft casts its prefix to it); masks
    stay integer, and gates float32 (the all-scope attention takes tanh(gate) in float32, then casts)."""
    bank = mixed_bank().to(dtype=torch.bfloat16)
    assert bank.tensors["prefix"].dtype == bank.tensors["prompt"].dtype == torch.bfloat16
    assert torch.equal(bank.tensors["prefix"][1], table(3, 8, 200).to(torch.bfloat16))
    assert bank.tensors["prefix_mask"].dtype == bank.tensors["prompt_mask"].dtype == torch.long
    scoped = all_scope_bank().to(dtype=torch.bfloat16)
    for kind in ("encoder_self_attention", "cross_attention"):
        assert scoped.tensors[f"{kind}.prefix"].dtype == torch.bfloat16
        assert scoped.tensors[f"{kind}.gate"].dtype == torch.float32
        assert scoped.tensors[f"{kind}.mask"].dtype == torch.long
    moved = all_scope_bank().to(device="meta")
    assert {value.device.type for value in moved.tensors.values()} == {"meta"}
    assert moved.tensors["prefix"].dtype == torch.float32  # no dtype: kept
    assert bank.rows(["a", None], device="meta").device.type == "meta"


def test_read_adapter_refuses_an_adapter_that_changes_the_weights(tmp_path):
    """read_adapter (the bank's reader, public in prefix_tuning_utils.answering) names a LoRA adapter and why it
    cannot share a batch, before reading any weights."""
    import json

    from prefix_tuning_utils.answering.bank import read_adapter

    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    trained = SimpleNamespace(
        path=str(tmp_path), revision="main", settings={}, base_args=SimpleNamespace(token=None, cache_dir=None)
    )
    with pytest.raises(ValueError) as error:
        read_adapter("acme", trained, None, "seq2seq")
    assert str(error.value) == (
        f"Adapter 'acme' ({tmp_path}) is a LORA adapter, which changes the base model's weights: it cannot share a "
        "batch with other adapters. Serve it alone (one adapter per process)."
    )
