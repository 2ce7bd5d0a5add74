"""The model card of a run: a README.md written from what the run did, with its plots.

At the end of a run (on world process zero) `save_run_card` writes, next to the adapter:

* `run_record.json`: what the card says that no other output file holds: the command (tokens redacted), the
  data and its split, the hyperparameters, the confusion matrix, the answer to an example sentence, versions;
* `confusion_matrix.png` and `loss_curve.png` (matplotlib's Agg canvas: no GUI, no global backend change);
* `README.md`: the card, rendered by `render_model_card` from those files, `all_results.json`,
  `adapter_config.json` and the adapter file(s), through the Jinja template `templates/model_card.md` and
  huggingface_hub's `ModelCard` / `ModelCardData` (the model-index through `EvalResult`). This module is the one
  writer of the output folder's README.md; `hub.push_run` renders it again with the repo id it pushes to.

Metrics and the confusion-matrix plot come from `metrics` (scikit-learn); nothing is counted here.

Nothing here reads a pickle, and the record is built from redacted values only: it holds no token.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
from importlib import metadata
from pathlib import Path

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .data import FINANCIAL_PHRASEBANK_CONFIGS, FINANCIAL_PHRASEBANK_REPO
from .metrics import NO_LABEL, confusion_matrix, label_report, plot_confusion_matrix
from .modeling import initialises_from_config
from .run_files import ADAPTER_CONFIG_FILE, ALL_RESULTS_FILE, CARD_FILE, CONFUSION_PNG, LOSS_PNG, PLOT_FILES
from .run_files import ADAPTER_WEIGHTS_FILE as ADAPTER_WEIGHTS
from .run_files import ALL_LAYER_PREFIX_FILE as SCOPE_WEIGHTS  # --prefix_scope all: the added prefixes
from .run_files import PREFIX_SCOPE_KEY as SCOPE_KEY  # the adapter_config.json key that says so
from .run_files import RUN_RECORD_FILE as RUN_RECORD


logger = logging.getLogger(__name__)

__all__ = [
    "CARD_FILE",
    "EXAMPLE_SENTENCE",
    "PLOT_FILES",
    "RUN_RECORD",
    "build_run_record",
    "redact_argv",
    "render_model_card",
    "save_run_card",
    "training_command",
    "write_model_card",
    "write_plots",
]

TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"
EXAMPLE_SENTENCE = "Quarterly operating profit rose 40 percent from a year earlier ."
EXAMPLE_MAX_NEW_TOKENS = 10
TOKEN_FLAGS = ("--hub_token", "--token")
REDACTED = "<redacted>"
FINANCIAL_PHRASEBANK_LICENSE = "cc-by-nc-sa-3.0"
HUB_URL = "https://huggingface.co"
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
VERSIONED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "huggingface_hub")
HYPERPARAMETERS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "optim",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "bf16",
    "generation_max_length",
    "generation_num_beams",
)


# ---------------------------------------------------------------------------------------------- the record
def redact_argv(argv: list[str], secrets: list[str | None] = ()) -> list[str]:
    """The command line with the value of every token flag, and every occurrence of a known secret, replaced."""
    secrets = [s for s in secrets if s]
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in TOKEN_FLAGS:
            out.append(f"{flag}={REDACTED}" if eq else arg)
            hide_next = not eq
            continue
        for secret in secrets:
            arg = arg.replace(secret, REDACTED)
        out.append(arg)
    return out


def training_command(record: dict) -> str:
    """The command that reproduces the run, as it was typed (tokens redacted)."""
    world_size = record["hardware"]["world_size"]
    launcher = "python" if world_size == 1 else f"accelerate launch --num_processes {world_size}"
    return f"{launcher} run_prefix_tuning.py {shlex.join(record['argv'])}".strip()


def _is_local(path: str | None) -> bool:
    return bool(path) and (os.path.isabs(path) or os.path.isdir(path))


def _data_record(data_args, split_sizes: dict[str, int], labels: list[str]) -> dict:
    name = data_args.dataset_name
    fpb_config = None
    if name is not None and name.rstrip("/").split("/")[-1] == "financial_phrasebank":
        fpb_config = data_args.dataset_config_name or "sentences_allagree"
    elif data_args.train_file is not None:
        by_file = {file: config for config, file in FINANCIAL_PHRASEBANK_CONFIGS.items()}
        fpb_config = by_file.get(os.path.basename(data_args.train_file))
    from_files = name is None and data_args.train_file is not None
    held_out = data_args.validation_file is None and (fpb_config is not None and name is not None or from_files)
    return {
        "dataset_name": name,
        "dataset_config_name": data_args.dataset_config_name,
        "financial_phrasebank_config": fpb_config,
        "files": {
            split: getattr(data_args, f"{split}_file")
            for split in ("train", "validation", "test")
            if getattr(data_args, f"{split}_file")
        },
        "labels": list(labels),
        "sizes": dict(split_sizes),
        "held_out_percentage": data_args.validation_split_percentage if held_out else None,
        "split_seed": data_args.split_seed,
        "source_prefix": data_args.source_prefix,
        "max_source_length": data_args.max_source_length,
        "max_target_length": data_args.max_target_length,
    }


def _versions() -> dict[str, str]:
    from . import __version__

    versions = {"python": platform.python_version(), "prefix-tuning": __version__}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _example_answer(trainer, scorer) -> list[str] | None:
    """What the trained model writes for the card's example sentence: the answering core's generation (`scorer`, a
    `LabelScorer` around the trained model; greedy, at most EXAMPLE_MAX_NEW_TOKENS tokens), which is what the card's
    snippet does with plain peft.

    None where the weights are sharded across processes (FSDP, DeepSpeed): one process cannot generate alone.
    """
    if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
        return None
    return scorer.generate([EXAMPLE_SENTENCE], max_new_tokens=EXAMPLE_MAX_NEW_TOKENS)


def build_run_record(
    trainer,
    *,
    argv: list[str],
    model_args,
    data_args,
    prefix_args,
    labels: list[str],
    split_sizes: dict[str, int],
    parameters: tuple[int, int],
    eval_answers: tuple[list[str], list[str]] | None,
    hub_settings,
    scorer,
) -> dict:
    """Everything the model card needs from the run that no other output file holds. No token goes in."""
    args = trainer.args
    trainable, total = parameters
    record = {
        "argv": redact_argv(argv, [model_args.token, hub_settings.token]),
        "output_dir": args.output_dir,
        "base_model": model_args.model_name_or_path,
        "base_model_revision": model_args.model_revision,
        # False for a base initialised from its config (random weights, saved to base_model/): the quickstart's.
        "base_model_pretrained": not initialises_from_config(model_args),
        "model_type": trainer.accelerator.unwrap_model(trainer.model).config.model_type,
        "prefix": {
            "num_virtual_tokens": prefix_args.num_virtual_tokens,
            "prefix_projection": prefix_args.prefix_projection,
            "encoder_hidden_size": prefix_args.encoder_hidden_size,
            "init_weights": prefix_args.init_weights,
            "prefix_scope": prefix_args.prefix_scope,
        },
        "parameters": {"trainable": trainable, "total": total},
        "data": _data_record(data_args, split_sizes, labels),
        "hyperparameters": {key: _plain(getattr(args, key)) for key in HYPERPARAMETERS},
        "training": {"global_step": trainer.state.global_step, "epoch": trainer.state.epoch},
        "hardware": {
            "device": str(args.device.type),
            "n_gpu": args.n_gpu,
            "world_size": args.world_size,
        },
        "evaluation": None,
        "example": {
            "sentence": EXAMPLE_SENTENCE,
            "answer": _example_answer(trainer, scorer),
        },
        "hub": {"model_id": hub_settings.model_id, "revision": hub_settings.revision},
        "versions": _versions(),
    }
    if eval_answers is not None:
        answers, references = eval_answers
        record["evaluation"] = {
            "split": "validation",
            "columns": list(labels) + [NO_LABEL],
            "confusion_matrix": confusion_matrix(answers, references, labels),
        }
    return record


def _plain(value):
    """JSON-able form of a TrainingArguments value (enums become their value)."""
    value = getattr(value, "value", value)
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


# ----------------------------------------------------------------------------------------------- the plots
def write_plots(output_dir: str | os.PathLike, record: dict, log_history: list[dict]) -> list[str]:
    """Write the confusion-matrix and loss-curve PNGs that the run has data for; returns their file names."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no GUI backend

    for name in PLOT_FILES:  # a plot this run has no data for must not survive from an earlier run
        Path(output_dir, name).unlink(missing_ok=True)
    written = []
    if record.get("evaluation") is not None:
        rows, columns, counts = _confusion_table(record)
        title = f"Validation: {sum(map(sum, counts))} examples"
        plot_confusion_matrix(counts, rows, columns, os.path.join(output_dir, CONFUSION_PNG), title)
        written.append(CONFUSION_PNG)
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    if train or evals:
        fig = Figure(figsize=(6, 3.6), dpi=100)
        ax = fig.subplots()
        if train:
            ax.plot(*zip(*train), label="training loss")
        if evals:
            ax.plot(*zip(*evals), marker="o", label="validation loss")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(output_dir, LOSS_PNG))
        written.append(LOSS_PNG)
    return written


def _confusion_table(record: dict) -> tuple[list[str], list[str], list[list[int]]]:
    """Rows, columns and counts; the no-label column only when some answer was no label."""
    evaluation = record["evaluation"]
    labels, counts = record["data"]["labels"], evaluation["confusion_matrix"]
    if any(row[-1] for row in counts):
        return labels, evaluation["columns"], counts
    return labels, evaluation["columns"][:-1], [row[:-1] for row in counts]


# ------------------------------------------------------------------------------------------------ the card
def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _adapter_values(path: Path) -> tuple[int, str]:
    """Number of stored values in the adapter file, and their dtype(s)."""
    from safetensors import safe_open

    count, dtypes = 0, set()
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            tensor = handle.get_slice(key)
            shape = tensor.get_shape()
            count += int(torch.tensor(shape).prod().item()) if shape else 1
            dtypes.add(SAFETENSORS_DTYPES.get(tensor.get_dtype(), tensor.get_dtype()))
    return count, "/".join(sorted(dtypes))


def _size(n_bytes: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:,} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return ""


def _dataset_description(record: dict) -> tuple[str, str | None, str | None, str | None]:
    """(human-readable description, Hub dataset id, config, licence) of the training data."""
    data = record["data"]
    config = data["financial_phrasebank_config"]
    files = ", ".join(f"{split} `{os.path.basename(path)}`" for split, path in data["files"].items())
    if config is not None:
        where = f"the Hub archive of `{FINANCIAL_PHRASEBANK_REPO}`" if not data["files"] else f"local files ({files})"
        text = (
            f"[Financial PhraseBank](https://huggingface.co/datasets/{FINANCIAL_PHRASEBANK_REPO}) v1.0 "
            f"(Malo et al., 2014), configuration `{config}`, read from {where}"
        )
        return text, FINANCIAL_PHRASEBANK_REPO, config, FINANCIAL_PHRASEBANK_LICENSE
    if data["dataset_name"] is not None:
        name = data["dataset_name"]
        cfg = f", configuration `{data['dataset_config_name']}`" if data["dataset_config_name"] else ""
        return f"[`{name}`](https://huggingface.co/datasets/{name}){cfg}", name, data["dataset_config_name"], None
    return f"local files: {files}", None, None, None


def _card_data(record, results, model_name, base_model, dataset_id, dataset_config, license):
    """The front matter: peft's metadata, and a model-index with the validation accuracy and macro-F1.

    No model-index for a base model with random weights: the Hub shows a model-index as the model's evaluation
    results (on its page, in search and leaderboards), where a number says "this model scores 0.65" without the card
    text that says the weights are random. The card's body still shows the scores, under that warning.
    """
    data = record["data"]
    tags = ["prefix-tuning", "peft", "text-classification", record["model_type"]]
    if data["financial_phrasebank_config"]:
        tags.append("financial-phrasebank")
    if base_model is not None:
        tags.append(f"base_model:adapter:{base_model}")
    eval_results = []
    common = {
        "task_type": "text-classification",
        "task_name": "Text Classification",
        "dataset_type": dataset_id or "local",
        "dataset_name": dataset_id.split("/")[-1] if dataset_id else _local_dataset_name(record),
        "dataset_config": dataset_config,
        "dataset_split": "validation",
    }
    if "eval_accuracy" in results and record.get("base_model_pretrained", True):
        eval_results.append(
            EvalResult(**common, metric_type="accuracy", metric_value=results["eval_accuracy"], metric_name="Accuracy")
        )
        if "eval_macro_f1" in results:
            eval_results.append(
                EvalResult(
                    **common,
                    metric_type="f1",
                    metric_value=results["eval_macro_f1"],
                    metric_name="Macro F1",
                    metric_args={"average": "macro"},
                )
            )
    return ModelCardData(
        library_name="peft",
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        license=license,
        tags=tags,
        model_name=model_name,
        eval_results=eval_results or None,
    )


def _local_dataset_name(record: dict) -> str:
    files = record["data"]["files"]
    path = files.get("validation") or files.get("train") or next(iter(files.values()), "data")
    return os.path.basename(path)


def _licence_text(license: str | None, from_data: bool) -> str | None:
    if not license:
        return None
    if from_data:
        return (
            f"`{license}`, the licence of the training data (Financial PhraseBank v1.0: CC BY-NC-SA 3.0, "
            "non-commercial use, with attribution, share-alike); check the base model's licence too."
        )
    return f"`{license}`, the licence of the base model."


def _py(value) -> str:
    """A Python literal for a string or a list of strings, double-quoted as ruff formats it."""
    return json.dumps(value, ensure_ascii=False)


def _snippet_literals(record: dict, location: str, revision: str | None) -> dict[str, str]:
    """The Python literals the template's snippets are made of."""
    data = record["data"]
    return {
        "adapter": _py(location),
        "revision": f", revision={_py(revision)}" if revision else "",
        "example": _py(data["source_prefix"] + EXAMPLE_SENTENCE),
        "labels": _py(data["labels"]),
    }


def _adapter_files(out: Path, names: tuple[str, ...]) -> list[dict]:
    """Values, dtype and size of each adapter weights file present."""
    files = []
    for name in names:
        path = out / name
        values, dtype = _adapter_values(path) if path.is_file() else (0, "?")
        size = _size(path.stat().st_size if path.is_file() else 0)
        files.append({"name": name, "count": values, "dtype": dtype, "size": size})
    return files


def render_model_card(
    output_dir: str | os.PathLike,
    repo_id: str | None = None,
    revision: str | None = None,
    license: str | None = None,
) -> ModelCard:
    """The model card (README.md) of the finished run in `output_dir`, rendered from `templates/model_card.md`.

    `repo_id`: where the adapter is published (the snippets load it from there); without it, the Hub id the run
    was going to push to, else the local folder. `license`: the base model's licence if known; a licence of the
    training data that binds the adapter (Financial PhraseBank's CC BY-NC-SA 3.0) takes precedence. The prefix
    scope is read from `adapter_config.json` (`"prefix_scope": "all"`), else from the run record.
    """
    out = Path(output_dir)
    record = _read_json(out / RUN_RECORD)
    if not record:
        raise FileNotFoundError(f"{out / RUN_RECORD} is missing: it is written at the end of a training run.")
    results = _read_json(out / ALL_RESULTS_FILE)
    adapter_config = _read_json(out / ADAPTER_CONFIG_FILE)
    scope = adapter_config.get(SCOPE_KEY) or record["prefix"].get("prefix_scope") or "decoder"
    revision = revision if repo_id else (revision or record["hub"]["revision"])
    location = repo_id or record["hub"]["model_id"] or record["output_dir"]
    title = location.rstrip("/").split("/")[-1]
    base = adapter_config.get("base_model_name_or_path") or record["base_model"]
    base_on_hub = None if _is_local(base) else base
    data_text, dataset_id, dataset_config, data_license = _dataset_description(record)
    license = data_license or license
    model_name = location if location != record["output_dir"] else title  # a Hub id, or the run folder's name
    evaluation, answer = record.get("evaluation"), record["example"]["answer"]
    hyperparameters = [
        (key, value)
        for key, value in record["hyperparameters"].items()
        if value is not None and not (key == "max_steps" and value <= 0)
    ]
    return ModelCard.from_template(
        _card_data(record, results, model_name, base_on_hub, dataset_id, dataset_config, license),
        template_path=TEMPLATE,
        title=title,
        base=base,
        base_on_hub=base_on_hub,
        base_link=f"[`{base}`]({HUB_URL}/{base})" if base_on_hub else f"`{base}` (a local folder)",
        random_base=not record.get("base_model_pretrained", True),
        initialised_from=record["base_model"],
        data_text=data_text,
        label_list=", ".join(f"`{label}`" for label in record["data"]["labels"]),
        record=record,
        prefix=record["prefix"],
        parameters=record["parameters"],
        data=record["data"],
        results=results,
        adapter_config=adapter_config,
        scope_all=scope == "all",
        scope_weights=SCOPE_WEIGHTS,
        per_label=label_report(evaluation["confusion_matrix"], record["data"]["labels"]) if evaluation else None,
        confusion_png=CONFUSION_PNG,
        loss_png=LOSS_PNG if (out / LOSS_PNG).is_file() else None,
        py=_snippet_literals(record, location, revision),
        answer=repr(answer) if answer is not None else None,
        example_max_new_tokens=EXAMPLE_MAX_NEW_TOKENS,
        source_prefix=record["data"]["source_prefix"],
        source_prefix_repr=repr(record["data"]["source_prefix"]),
        adapter_files=_adapter_files(out, (ADAPTER_WEIGHTS, SCOPE_WEIGHTS) if scope == "all" else (ADAPTER_WEIGHTS,)),
        hyperparameters=hyperparameters,
        command=training_command(record),
        licence_text=_licence_text(license, from_data=data_license is not None),
    )


def write_model_card(
    output_dir: str | os.PathLike, repo_id: str | None = None, revision: str | None = None, license: str | None = None
) -> Path:
    """Render the card and save it as `output_dir/README.md`, the one writer of that file."""
    path = Path(output_dir, CARD_FILE)
    render_model_card(output_dir, repo_id, revision, license).save(path)
    return path


def save_run_card(output_dir: str | os.PathLike, record: dict, log_history: list[dict]) -> Path:
    """Write the run record, the plots and the model card (README.md, replacing peft's blank template)."""
    Path(output_dir, RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    write_plots(output_dir, record, log_history)
    path = write_model_card(output_dir)
    logger.info("Model card written to %s", path)
    return path
