#!/usr/bin/env python
"""Prefix-tune a frozen seq2seq model (T5) on a text classification task, text-to-text.

    accelerate launch --quiet --config_file accelerate_configs/default.yaml run_prefix_tuning.py recipes/t5-large_financial_phrasebank.yaml
    python run_prefix_tuning.py recipes/quickstart.yaml --num_train_epochs 2   # flags override the recipe
    python run_prefix_tuning.py --help

The same command is installed as `prefix-tuning`; the code is in prefix_tuning_utils/cli.py.
"""

from prefix_tuning_utils.cli import cli


if __name__ == "__main__":
    cli()
