"""What several test modules share: running the command line (in-process or as a process of its own), the shared
training arguments and results of the distributed runs, and the reference generation of a tiny prefix T5.

Fixtures are in conftest.py; test modules import these functions from here, never from one another.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftConfig, PeftModel, PrefixTuningConfig, TaskType, get_peft_model
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5ForConditionalGeneration

from prefix_tuning_utils import cli
from tests.conftest import REPO, tiny_t5_config


QUICKSTART = REPO / "examples" / "quickstart.txt"


# ------------------------------------------------------------------------------------------ running the command line
def run_main(argv):
    """`cli.main(argv)` in-process (every argument made a string): the trainer, or what a subcommand returns."""
    return cli.main([str(arg) for arg in argv])


def run_cli(argv, capsys) -> tuple[int, str]:
    """`prefix-tuning ARGV` in-process through `cli.cli()`, as the console script runs it: (exit code, stderr)."""
    capsys.readouterr()
    code = 0
    try:
        cli.cli([str(arg) for arg in argv])
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


LAUNCH_TIMEOUT = 300  # seconds for one process (an `accelerate launch`) on 2 shared cores (about 30-60 s normally)


def subprocess_env(offline: bool = True) -> dict[str, str]:
    """The environment of a process a test starts: this checkout's package, one thread; offline unless it talks to
    a fake Hub."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


@contextlib.contextmanager
def started(*commands: list, timeout: float = LAUNCH_TIMEOUT, offline: bool = True):
    """Start commands side by side (each in its own process group, in the repository root); yield a function that
    waits for them all and returns their (exit code, stdout and stderr).

    Whatever happens, no process is left behind: on a timeout or an error every group still running is killed.
    """
    procs = [
        subprocess.Popen(
            [str(part) for part in command],
            cwd=REPO,
            env=subprocess_env(offline),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for command in commands
    ]

    def wait() -> list[tuple[int, str]]:
        results = []
        for proc in procs:
            try:
                output, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{proc.args} ran longer than {timeout} s")
            results.append((proc.returncode, output))
        return results

    try:
        yield wait
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()


def run_script(*args, timeout: float = LAUNCH_TIMEOUT, offline: bool = True) -> subprocess.CompletedProcess:
    """`python run_prefix_tuning.py ARGS` as a process of its own: stdout and stderr kept apart, as bytes."""
    return subprocess.run(
        [sys.executable, "run_prefix_tuning.py", *map(str, args)],
        cwd=REPO,
        env=subprocess_env(offline),
        capture_output=True,
        timeout=timeout,
    )


def accelerate_launch(*args) -> list:
    return [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", *args]


def run_launch(*args) -> str:
    """`accelerate launch ARGS`, which must succeed; its output."""
    with started(accelerate_launch(*args)) as wait:
        [(code, output)] = wait()
    assert code == 0, output[-6000:]
    return output


# ---------------------------------------------------------------------------------------- the distributed runs
# 144 of the quickstart's 145 training sentences (a multiple of 8: no short last batch), 17 held out, evaluated in
# batches of 5 per process: with 2 processes the last global batch is padded with 3 duplicates.
TRAIN_ARGS = [
    "--train_file", QUICKSTART,
    "--label_words", "negative,neutral,positive",
    "--do_train", "--do_eval", "--predict_with_generate",
    "--max_train_samples", "144",
    "--num_train_epochs", "5",
    "--learning_rate", "0.05",
    "--per_device_eval_batch_size", "5",
    "--logging_steps", "7",  # does not divide the 90 steps: the last steps are logged by LogLastStepCallback
    "--save_strategy", "no",
    "--seed", "42",
    "--report_to", "none",
    "--disable_tqdm", "true",
]  # fmt: skip


def results(output_dir: Path) -> tuple[dict, dict]:
    """(all_results.json, trainer_state.json) of a run."""
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return json.loads((output_dir / "all_results.json").read_text()), state


# ------------------------------------------------------------------------ reference generation of a prefix T5
VOCAB = 48
STEPS = 5


def make_models(prefix_projection: bool = False, **config_overrides):
    """A tiny random T5 and a peft prefix model on it, with answers that a dropped prefix would change."""
    torch.manual_seed(0)
    base = T5ForConditionalGeneration(tiny_t5_config(VOCAB, **config_overrides)).eval()
    config = PrefixTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        num_virtual_tokens=6,
        prefix_projection=prefix_projection,
        encoder_hidden_size=base.config.d_model,
        token_dim=base.config.num_heads * base.config.d_kv,
        num_attention_heads=base.config.num_heads,
        num_layers=base.config.num_decoder_layers,
    )
    model = get_peft_model(base, config).eval()
    with torch.no_grad():
        # T5's default init makes a tiny random model answer the pad token whatever the input; larger
        # embeddings give varied answers, so that a dropped prefix cannot go unnoticed.
        for name, param in base.named_parameters():
            if "shared" in name or "lm_head" in name:
                param.normal_(0.0, 1.0)
        for param in model.prompt_encoder.parameters():
            param.normal_(0.0, 2.0)
    return base, model


def padded_batch():
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 1], [10, 11, 12, 1, 0, 0], [13, 14, 1, 0, 0, 0]])
    return input_ids, (input_ids != 0).long()


def manual_greedy(model, input_ids, attention_mask, steps=STEPS, return_logits=False):
    """Greedy decoding by full forward passes (no cache): the reference for every generation path."""
    decoder = torch.zeros(input_ids.shape[0], 1, dtype=torch.long)
    step_logits = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder).logits
            step_logits.append(logits[:, -1])
            decoder = torch.cat([decoder, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return (decoder, step_logits) if return_logits else decoder


def generate(model, input_ids, attention_mask, **kwargs):
    with torch.no_grad():
        return model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=STEPS, min_new_tokens=STEPS, **kwargs
        )


def sequence_log_probs(model, input_ids, attention_mask, sequences, pad_id=0, eos_id=1):
    """Sum of log-probabilities of each generated sequence, recomputed by one full forward pass."""
    decoder_in, targets = sequences[:, :-1], sequences[:, 1:]
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_in).logits
    log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    # Positions after the first end-of-sequence token are padding.
    finished = torch.cumsum((targets == eos_id).long(), dim=1) - (targets == eos_id).long()
    return (log_probs * (finished == 0)).sum(dim=1)


def plain_usage_snippet(adapter_dir, sentences, max_new_tokens=5):
    """Exactly what the README and model card promise a user can do with an adapter."""
    config = PeftConfig.from_pretrained(adapter_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(config.base_model_name_or_path)
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    batch = tokenizer(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens)
    return tokenizer.batch_decode(out, skip_special_tokens=True)
