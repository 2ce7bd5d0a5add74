"""Training-speed defaults: length-grouped batches (`--train_sampling_strategy group_by_length`) and no per-step
parameter count."""

from __future__ import annotations

import random

import pytest
import torch
from datasets import Dataset

from prefix_tuning_utils.sampling import SeededLengthGroupedSampler, token_lengths
from tests.conftest import REPO
from tests.helpers import run_main


QUICKSTART = REPO / "examples" / "quickstart.txt"


def skewed_lengths(n: int, seed: int = 0) -> list[int]:
    """Sentence lengths shaped like Financial PhraseBank's in T5 tokens (mean ~33, long tail)."""
    rng = random.Random(seed)
    return [max(4, min(200, int(rng.lognormvariate(3.4, 0.45)))) for _ in range(n)]


def batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


def padding_efficiency(lengths: list[int], order: list[int], size: int) -> float:
    real = sum(lengths)
    processed = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches(order, size))
    return real / processed


@pytest.mark.parametrize("n", [2037, 97, 8, 3])
def test_every_example_once_per_epoch_and_only_the_last_batch_short(n):
    lengths = skewed_lengths(n)
    sampler = SeededLengthGroupedSampler(lengths, batch_size=8, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(n)) and len(sampler) == n
        sizes = [len(batch) for batch in batches(order, 8)]
        assert all(size == 8 for size in sizes[:-1])


def test_batches_group_similar_lengths_and_the_longest_comes_first():
    lengths = skewed_lengths(2037)
    sampler = SeededLengthGroupedSampler(lengths, batch_size=8, seed=42)
    order = list(sampler)
    grouped = padding_efficiency(lengths, order, 8)
    shuffled = padding_efficiency(
        lengths, torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist(), 8
    )
    assert grouped >= 0.9 and shuffled < 0.75, (grouped, shuffled)
    assert max(lengths) in [lengths[i] for i in order[:8]]


def test_order_depends_only_on_seed_and_epoch():
    lengths = skewed_lengths(500)
    a, b = SeededLengthGroupedSampler(lengths, 8, seed=3), SeededLengthGroupedSampler(lengths, 8, seed=3)
    torch.manual_seed(123)  # the global generator does not matter (a resumed run has drawn other numbers)
    first = list(a)
    torch.manual_seed(456)
    assert list(b) == first
    a.set_epoch(1)
    assert list(a) != first  # a new shuffle every epoch ...
    b.set_epoch(1)
    assert list(a) == list(b)  # ... the same one in every process and after a resume
    assert list(SeededLengthGroupedSampler(lengths, 8, seed=4)) != first


def test_batches_are_not_a_length_curriculum():
    """Batches are shuffled after grouping: long and short ones are spread over the epoch."""
    lengths = skewed_lengths(2037)
    order = list(SeededLengthGroupedSampler(lengths, 8, seed=0))
    maxima = [max(lengths[i] for i in batch) for batch in batches(order, 8)][1:-1]
    half = len(maxima) // 2
    first, second = sum(maxima[:half]) / half, sum(maxima[half:]) / (len(maxima) - half)
    assert abs(first - second) / max(first, second) < 0.15, (first, second)
    # and neighbouring batches are not sorted by length
    ups = sum(later > earlier for earlier, later in zip(maxima, maxima[1:]))
    assert 0.3 < ups / (len(maxima) - 1) < 0.7


def test_token_lengths_reads_arrow_lengths():
    dataset = Dataset.from_dict({"input_ids": [[1, 2, 3], [4], [5, 6]], "labels": [[1], [2], [3]]})
    assert token_lengths(dataset) == [3, 1, 2]
    assert token_lengths(dataset.select([2, 0])) == [2, 3]
    assert token_lengths(dataset.select([])) == []


def quickstart_argv(out, *extra):
    return [
        "--model_name_or_path", "examples/tiny-t5", "--train_file", QUICKSTART,
        "--label_words", "negative,neutral,positive", "--output_dir", out, "--do_train",
        "--max_steps", "1", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def train_batches(trainer) -> list[dict]:
    return list(trainer.get_train_dataloader())


def test_script_groups_training_batches_by_default(tmp_path):
    """The script's default builds length-grouped batches padded to their longest sentence; random is one flag."""

    def efficiency(trainer):
        loader = train_batches(trainer)
        real = sum(int(batch["attention_mask"].sum()) for batch in loader)
        processed = sum(batch["input_ids"].numel() for batch in loader)
        return real / processed, sum(len(batch["input_ids"]) for batch in loader)

    default = run_main(quickstart_argv(tmp_path / "default"))
    assert default.args.train_sampling_strategy == "group_by_length"
    plain = run_main(quickstart_argv(tmp_path / "random", "--train_sampling_strategy", "random"))
    (grouped, seen), (shuffled, seen_random) = efficiency(default), efficiency(plain)
    assert seen == seen_random == len(default.train_dataset)
    assert grouped > 0.9 and grouped > shuffled + 0.05, (grouped, shuffled)


def test_flop_estimate_counts_the_parameters_once(tmp_path, monkeypatch):
    """transformers counts every parameter on every step for its FLOP estimate; ours counts them once."""
    from transformers import PreTrainedModel

    calls = []
    original = PreTrainedModel.num_parameters
    monkeypatch.setattr(
        PreTrainedModel, "num_parameters", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    trainer = run_main(quickstart_argv(tmp_path, "--max_steps", "6"))
    assert trainer.state.global_step == 6 and trainer.state.total_flos > 0
    assert len(calls) <= 2, len(calls)  # one FLOP estimate (plus any count at start-up), not one per step
