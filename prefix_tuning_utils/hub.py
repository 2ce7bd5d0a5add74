"""Publishing a run on the Hugging Face Hub: `--push_to_hub`, `prefix-tuning push`, and no token in anything written.

transformers' `Trainer` pushes by uploading the whole output folder, `training_args.bin` included: a pickle of
the `TrainingArguments` that holds `--hub_token` in plain text. So `take_hub_settings` moves the Hub settings out
of the `TrainingArguments` before the `Trainer` (or a log line) sees them: the `Trainer` never pushes and never
pickles the token. After the run is saved locally, `push_run` publishes an allow-list of top-level files itself
(adapter, tokenizer, results, model card and its plots) in one commit, after checking that none holds the token.
A Hub error becomes one `PushError` line that says what failed and the command that retries the push alone:

    prefix-tuning push --output_dir runs/x --hub_model_id me/x

`prefix-tuning push` (parsed in `arguments.parse_push_args`, run by `cli`) publishes a finished run with `push_run`;
`push_settings` turns its arguments into the same `HubSettings` a training run's push uses.

`--hub_strategy` is honoured as in transformers: `end` pushes once at the end; `every_save` also pushes the adapter
at every checkpoint; `checkpoint` also pushes the latest checkpoint's resumable state to `last-checkpoint/`;
`all_checkpoints` pushes every checkpoint to its own folder. `training_args.bin` is never uploaded.

Every upload, final or checkpoint, goes through `upload`: allow patterns (huggingface_hub's `filter_repo_objects`, as
`upload_folder` applies them) pick the top-level files of a local folder, the secret check reads them, and one
`create_commit` sends them.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import model_card
from .arguments import PUSH_PROG, PushArguments
from .errors import ArgumentError, PushError
from .network import describe_push_failure
from .run_files import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_FILES,
    CARD_FILE,
    CHECKPOINT_STATE_FILES,
    PLOT_FILES,
    RESULT_FILES,
    RUN_RECORD_FILE,
    TOKENIZER_FILES,
)


logger = logging.getLogger(__name__)

__all__ = [
    "HubSettings",
    "PushError",
    "HubCheckpointCallback",
    "files_to_publish",
    "get_callbacks",
    "push_run",
    "push_settings",
    "retry_command",
    "take_hub_settings",
    "upload",
]

# The adapter (with --prefix_scope all its encoder self-attention and cross-attention prefixes) and the settings it
# answers with (label words, input format: read back by PrefixClassifier and --do_predict), the tokenizer, the results,
# the model card and its plots: a finished run's published files. Never run_record.json, base_model/ or a pickle.
CARD_FILES = (CARD_FILE, *PLOT_FILES)
RUN_PATTERNS = ADAPTER_FILES + TOKENIZER_FILES + RESULT_FILES + CARD_FILES
CHECKPOINT_PATTERNS = ADAPTER_FILES + TOKENIZER_FILES  # a checkpoint's adapter, pushed to the repo's root
# What `resume_from_checkpoint` needs besides the adapter; never training_args.bin (a pickle of the arguments).
CHECKPOINT_STATE_PATTERNS = CHECKPOINT_STATE_FILES


@dataclass
class HubSettings:
    """Where and how to publish; taken out of the TrainingArguments so the Trainer never sees the token."""

    push_to_hub: bool = False
    model_id: str | None = None
    token: str | None = field(default=None, repr=False)
    private: bool | None = None
    strategy: str = "end"
    revision: str | None = None
    output_dir: str = "."
    repo_id: str | None = None  # the full `namespace/name`, once the repo exists


# ---------------------------------------------------------------------------------------- settings and checks
def _check_repo_id(repo_id: str, flag: str = "--hub_model_id") -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ArgumentError(
            f"{flag} {repo_id!r} is not a valid Hub repo id ({err}); use `name` or `namespace/name` with letters, "
            "digits, `-`, `_` and `.`."
        ) from None


def _check_base_model(base: str, source: str) -> None:
    if os.path.isabs(base) or os.path.isdir(base):
        raise ArgumentError(
            f"{source}: the adapter's base model is the local folder {base}, which people who download the adapter "
            "do not have. Upload the base model to the Hub (`hf upload <you>/<name> <folder>`) and train with "
            "--model_name_or_path <you>/<name>, or train from a Hub model such as t5-large."
        )


def take_hub_settings(training_args, model_args) -> HubSettings:
    """Move the Hub settings out of `training_args` and check them, before any work is done.

    Afterwards `training_args.push_to_hub` is False and `training_args.hub_token` is None, so the Trainer does not
    push the output folder and `training_args.bin` (and the logged arguments) hold no token.
    """
    settings = HubSettings(
        push_to_hub=bool(training_args.push_to_hub),
        model_id=training_args.hub_model_id,
        token=training_args.hub_token,
        private=training_args.hub_private_repo,
        strategy=getattr(training_args.hub_strategy, "value", training_args.hub_strategy),
        revision=training_args.hub_revision,
        output_dir=training_args.output_dir,
    )
    training_args.push_to_hub = False
    training_args.hub_token = None
    if settings.push_to_hub:
        if not training_args.do_train:
            raise ArgumentError(
                f"--push_to_hub publishes the adapter a training run writes: add --do_train (or use `{PUSH_PROG}` "
                "to publish a finished run)."
            )
        settings.model_id = settings.model_id or Path(settings.output_dir).resolve().name
        _check_repo_id(settings.model_id)
        _check_base_model(model_args.model_name_or_path, "--push_to_hub")
    return settings


# -------------------------------------------------------------------------------------------------- pushing
def _select(folder: str | os.PathLike, patterns: tuple[str, ...]) -> list[str]:
    """The top-level files of `folder` that the allow patterns match (never a subfolder: checkpoints stay out)."""
    from huggingface_hub.utils import filter_repo_objects

    names = (
        sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)))
        if os.path.isdir(folder)
        else []
    )
    return list(filter_repo_objects(names, allow_patterns=list(patterns)))


def files_to_publish(output_dir: str | os.PathLike) -> list[str]:
    """The top-level files of a finished run that are published; never checkpoints, pickles or run records."""
    return _select(output_dir, RUN_PATTERNS)


def _refuse_secrets(paths: list[str], secrets: list[str | None]) -> None:
    """Last line of defence: no file that holds a token's bytes is uploaded."""
    for secret in filter(None, secrets):
        needle = secret.encode()
        for path in paths:
            if needle in Path(path).read_bytes():
                raise PushError(f"refusing to upload {path}: it contains the Hub token. Nothing was pushed.")


def retry_command(settings: HubSettings) -> str:
    parts = [
        *PUSH_PROG.split(),
        "--output_dir",
        settings.output_dir,
        "--hub_model_id",
        settings.repo_id or settings.model_id,
    ]
    if settings.revision:
        parts += ["--hub_revision", settings.revision]
    if settings.private:
        parts += ["--hub_private_repo", "true"]
    command = shlex.join(parts)
    return command + " --hub_token <your token>" if settings.token else command


def _get_api(settings: HubSettings):
    from huggingface_hub import HfApi

    return HfApi(token=settings.token)


def _ensure_repo(api, settings: HubSettings) -> str:
    if settings.repo_id is None:
        url = api.create_repo(settings.model_id, private=settings.private, exist_ok=True)
        settings.repo_id = url.repo_id
        if settings.revision:
            api.create_branch(settings.repo_id, branch=settings.revision, exist_ok=True)
    return settings.repo_id


def upload(settings: HubSettings, parts: list[tuple[str, str, tuple[str, ...]]], message: str):
    """The one upload path: for each `(local folder, folder in the repo, allow patterns)` of `parts`, the matching
    top-level files, checked for the token, in one commit. Returns (number of files, CommitInfo), or (0, None) when
    nothing matched. Raises PushError if a file holds the token, the Hub's errors otherwise."""
    from huggingface_hub import CommitOperationAdd

    files = [
        (os.path.join(folder, name), f"{in_repo}/{name}" if in_repo else name)
        for folder, in_repo, patterns in parts
        for name in _select(folder, patterns)
    ]
    if not files:
        return 0, None
    from huggingface_hub import get_token

    # Without --hub_token the push uses the token of `hf auth login` (or HF_TOKEN): that one must not leave either.
    _refuse_secrets([path for path, _ in files], [settings.token or get_token()])
    api = _get_api(settings)
    repo_id = _ensure_repo(api, settings)
    operations = [CommitOperationAdd(path_in_repo=in_repo, path_or_fileobj=path) for path, in_repo in files]
    return len(files), api.create_commit(repo_id, operations, commit_message=message, revision=settings.revision)


def _base_model_license(api, base: str | None) -> str | None:
    """The base model's licence from its Hub tags, where the Hub knows it (best effort)."""
    if not base or os.path.isabs(base) or os.path.isdir(base):
        return None
    try:
        info = api.model_info(base)
    except Exception:  # noqa: BLE001 - a missing licence only leaves the card's `license` out
        return None
    card_data = getattr(info, "card_data", None)
    license = getattr(card_data, "license", None) if card_data is not None else None
    if license is None:
        license = next((t.split(":", 1)[1] for t in info.tags or [] if t.startswith("license:")), None)
    return license if isinstance(license, str) else None


def push_run(settings: HubSettings) -> str:
    """Publish the finished run in `settings.output_dir` in one commit; returns the commit URL.

    Renders the model card again with the repo id the Hub gives (also written locally, so the local card is the
    published one). Raises `PushError` (one line) on any Hub or network error; the local files are untouched
    apart from README.md.
    """
    from huggingface_hub.errors import HTTPError

    out = settings.output_dir
    adapter_config = Path(out, ADAPTER_CONFIG_FILE)
    if not (adapter_config.is_file() and Path(out, ADAPTER_FILES[0]).is_file()):
        raise ArgumentError(
            f"--output_dir {out} holds no adapter ({', '.join(ADAPTER_FILES[:2])}): nothing to push. Point --output_dir "
            "at a finished training run."
        )
    if not Path(out, RUN_RECORD_FILE).is_file():
        raise ArgumentError(
            f"--output_dir {out} has no {RUN_RECORD_FILE} (written at the end of a training run by this "
            "package): the model card cannot be made. Run the training again with this version of the package."
        )
    base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    _check_base_model(base or "", f"--output_dir {out}")
    api = _get_api(settings)
    stage = "creating the repo"
    try:
        repo_id = _ensure_repo(api, settings)
        model_card.write_model_card(out, repo_id, settings.revision, _base_model_license(api, base))
        stage = "committing the files to"
        count, info = upload(settings, [(out, "", RUN_PATTERNS)], "Prefix-tuned adapter, tokenizer and model card")
    except (HTTPError, OSError) as err:
        raise PushError(
            f"pushing {out} to the Hub failed while {stage} {settings.repo_id or settings.model_id}: "
            f"{describe_push_failure(err)}. The run is saved in {out}; retry the push alone with: "
            f"{retry_command(settings)}"
        ) from None
    logger.info("Pushed %d files of %s to %s: %s", count, out, repo_id, info.commit_url)
    return info.commit_url


class HubCheckpointCallback(TrainerCallback):
    """Pushes at every save for `--hub_strategy every_save|checkpoint|all_checkpoints`; a failure is a warning."""

    def __init__(self, settings: HubSettings):
        self.settings = settings

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from huggingface_hub.errors import HTTPError

        checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        parts = [(checkpoint, "", CHECKPOINT_PATTERNS)]
        state_patterns = CHECKPOINT_PATTERNS + CHECKPOINT_STATE_PATTERNS
        if self.settings.strategy == "checkpoint":
            parts.append((checkpoint, "last-checkpoint", state_patterns))
        elif self.settings.strategy == "all_checkpoints":
            parts.append((checkpoint, os.path.basename(checkpoint), state_patterns))
        try:
            upload(self.settings, parts, f"Training in progress, step {state.global_step}")
        except (HTTPError, OSError, PushError) as err:
            logger.warning(
                "Pushing checkpoint %s to the Hub failed (%s); training goes on, and the push at the end tries again.",
                state.global_step,
                describe_push_failure(err) if not isinstance(err, PushError) else err,
            )


def get_callbacks(settings: HubSettings) -> list[TrainerCallback]:
    return [HubCheckpointCallback(settings)] if settings.push_to_hub and settings.strategy != "end" else []


# ---------------------------------------------------------------------------------------- prefix-tuning push
def push_settings(args: PushArguments) -> HubSettings:
    """The Hub settings of `prefix-tuning push` (a finished run published again), checked before anything is sent."""
    settings = HubSettings(
        push_to_hub=True,
        model_id=args.hub_model_id or Path(args.output_dir).resolve().name,
        token=args.hub_token,
        private=args.hub_private_repo,
        revision=args.hub_revision,
        output_dir=args.output_dir,
    )
    _check_repo_id(settings.model_id)
    return settings
