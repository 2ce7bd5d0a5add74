"""benchmarks/bench_predict.py's count of multiply-adds, which bounds score / generate rows/s: checked by hand."""

from __future__ import annotations

from bench_predict import multiply_adds
from transformers import T5Config


class WordTokenizer:
    """One id per word, then end-of-sequence (as T5's tokenizer ends every input and label with </s>)."""

    def __call__(self, texts=None, text_target=None):
        return {"input_ids": [[2 + i for i, _ in enumerate(text.split())] + [1] for text in texts or text_target]}


def test_multiply_adds_counted_by_hand():
    config = T5Config(vocab_size=10, d_model=4, d_kv=2, num_heads=2, d_ff=8, num_layers=1, num_decoder_layers=1,
                      feed_forward_proj="relu")  # fmt: skip
    work = multiply_adds(config, WordTokenizer(), ["a b c"], batch_size=32, num_virtual_tokens=20)
    # One row of 4 tokens (3 words + </s>); d_model 4, 2 heads x 2 = 4 inner, d_ff 8, vocabulary 10.
    encoder = 4 * (4 * 4 * 4 + 2 * 4 * 8 + 2 * 4 * 4)  # projections, feed-forward, attention over 4 tokens
    cross = 4 * 2 * 4 * 4  # cross-attention keys and values of the 4 encoder states

    def step(rows, keys_self):  # decoder layer (self q,k,v,o + cross q,o; feed-forward; attention) + output layer
        return rows * (6 * 4 * 4 + 2 * 4 * 8 + 2 * 4 * (keys_self + 4) + 4 * 10)

    first = step(1, 21)  # 20 virtual tokens + the start token
    assert work["encoder"] == encoder
    # generate: the label word, then one more step for end-of-sequence; score: that step for each of the 3 labels.
    assert work["generate"] == encoder + cross + first + step(1, 22)
    assert work["score"] == encoder + cross + first + step(3, 22)


def test_multiply_adds_batch_as_predict_does():
    """Sorted by length within a chunk, the two short sentences share a batch (padded to 2 tokens), the two long
    ones the other (8 tokens), whatever their order in the file."""
    config = T5Config(vocab_size=10, d_model=4, d_kv=2, num_heads=2, d_ff=8, num_layers=1, num_decoder_layers=1)
    texts = ["a", "a b c d e f g", "b", "c d e f g h i"]
    work = multiply_adds(config, WordTokenizer(), texts, batch_size=2)

    def per_token(length):
        return 4 * 4 * 4 + 2 * 4 * 8 + 2 * 4 * length

    assert work["encoder"] == 2 * 2 * per_token(2) + 2 * 8 * per_token(8)
