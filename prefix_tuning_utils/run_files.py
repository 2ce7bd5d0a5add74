"""Every name of a file the package writes to, or reads from, a run folder (`--output_dir`, or a trained model's
folder given to `--model_name_or_path`), each spelt once; and the one label word that is no label (`NO_LABEL`).

The ground floor of the package, with :mod:`errors`: no third-party import. Every module takes these names from
here (a grep for any of the quoted names below over `prefix_tuning_utils/` finds this file only, but for the words
`base_model` and `prefix_scope`, which are also keys of the run record and of the prediction settings); which of them
are published, refused, resumed from or cleaned up is decided where that is done (`hub`, `output_dir`, `predict`,
...). tests/test_ground_floor.py checks it.
"""

from __future__ import annotations


__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_FILES",
    "ADAPTER_WEIGHTS_FILE",
    "ALL_LAYER_PREFIX_FILE",
    "ALL_RESULTS_FILE",
    "BAD_ROWS_FILE",
    "BASE_MODEL_DIR",
    "CARD_FILE",
    "CHECKPOINT_COMPLETE_FILE",
    "CHECKPOINT_STATE_FILES",
    "CONFUSION_PNG",
    "EVAL_RESULTS_FILE",
    "GENERATION_CONFIG_FILE",
    "LOSS_PNG",
    "MODEL_CONFIG_FILE",
    "NO_LABEL",
    "PLOT_FILES",
    "PREDICTIONS_CSV_FILE",
    "PREDICTIONS_FILE",
    "PREDICTIONS_STATE_FILE",
    "PREDICT_CONFUSION_PNG",
    "PREDICT_RESULTS_FILE",
    "PREFIX_ENCODER_FILE",
    "PREFIX_SCOPE_KEY",
    "RESULT_FILES",
    "RUN_ARGS_FILE",
    "RUN_RECORD_FILE",
    "TASK_SETTINGS_FILE",
    "TOKENIZER_CONFIG_FILE",
    "TOKENIZER_FILES",
    "TRAINER_STATE_FILE",
    "TRAINING_ARGS_FILE",
    "TRAIN_RESULTS_FILE",
    "WEIGHT_FILES",
]

# --- the adapter, and what it answers with ---------------------------------------------------------------------
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"  # peft's
ADAPTER_CONFIG_FILE = "adapter_config.json"  # peft's
# --prefix_scope all: the encoder self-attention and cross-attention prefixes (all_layer_prefix.serialization), and
# the key of adapter_config.json that says so.
ALL_LAYER_PREFIX_FILE = "all_layer_prefix.safetensors"
PREFIX_SCOPE_KEY = "prefix_scope"
# The label words and input format a trained model answers with, saved next to every model the package writes.
TASK_SETTINGS_FILE = "prefix_tuning.json"
ADAPTER_FILES = (ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE, ALL_LAYER_PREFIX_FILE, TASK_SETTINGS_FILE)
# A base model initialised from a config (the quickstart's), saved next to the adapter that points at it.
BASE_MODEL_DIR = "base_model"

# --- a complete model (transformers' names): its config and weights ---------------------------------------------
MODEL_CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    TOKENIZER_CONFIG_FILE,
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
)

# --- results and training state (the Trainer's names) -----------------------------------------------------------
ALL_RESULTS_FILE = "all_results.json"
# Written at the end of a successful training run (by `trainer.save_metrics("train", ...)`): the run is finished.
TRAIN_RESULTS_FILE = "train_results.json"
EVAL_RESULTS_FILE = "eval_results.json"
PREDICT_RESULTS_FILE = "predict_results.json"
RESULT_FILES = (ALL_RESULTS_FILE, TRAIN_RESULTS_FILE, EVAL_RESULTS_FILE, PREDICT_RESULTS_FILE)
TRAINER_STATE_FILE = "trainer_state.json"
TRAINING_ARGS_FILE = "training_args.bin"  # a pickle of the arguments: never read, never published
# The arguments of the run that last wrote to the folder (tokens redacted), and what identifies it
# (output_dir.RunIdentity): which run a folder holds.
RUN_ARGS_FILE = "run_args.json"
# What `resume_from_checkpoint` needs besides the adapter (patterns, as the Trainer names them).
CHECKPOINT_STATE_FILES = (TRAINER_STATE_FILE, "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth")
# Written into a checkpoint folder after everything else; a run killed while saving leaves a folder without it,
# which is never resumed from.
CHECKPOINT_COMPLETE_FILE = "checkpoint_complete"
# Checkpoints of `--prefix_projection` runs: the whole prefix encoder (embedding + MLP); peft's adapter file keeps only
# the projected prefix, from which training cannot continue.
PREFIX_ENCODER_FILE = "prefix_encoder.safetensors"

# --- the model card (model_card.py) ------------------------------------------------------------------------------
CARD_FILE = "README.md"
RUN_RECORD_FILE = "run_record.json"
CONFUSION_PNG = "confusion_matrix.png"
LOSS_PNG = "loss_curve.png"
PLOT_FILES = (CONFUSION_PNG, LOSS_PNG)

# --- batch prediction (predict.py) ---------------------------------------------------------------------------------
PREDICTIONS_FILE = "predictions.jsonl"
PREDICTIONS_CSV_FILE = "predictions.csv"
PREDICTIONS_STATE_FILE = "predictions.state.json"
BAD_ROWS_FILE = "predict_bad_rows.jsonl"
PREDICT_CONFUSION_PNG = "predict_confusion_matrix.png"
# An answer that is none of the label words (generate mode): a column of every confusion matrix written.
NO_LABEL = "(no label)"
