"""The real `prefix-tuning serve` in a process of its own, on a free loopback port (slow: each test starts one).

* mixed-adapter requests sent concurrently, every answer checked against the Python API answering the same text
  alone (`PrefixClassifier.from_pretrained(folder)`: peft's own forward, or the bare base model for `null`), the API
  key, the Hugging Face `InferenceClient` on `/adapters/NAME` unchanged, and the metrics' row counts;
* SIGTERM with requests in flight: new connections are refused at once, every request in flight is answered, and
  the process exits 0;
* importing the package, or training, imports no server package (FastAPI, uvicorn, prometheus-client).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from prefix_tuning_utils.classifier import PrefixClassifier
from tests.conftest import REPO
from tests.tiny_adapters import answers_alone, assert_same_answer, save_seq2seq_adapters


pytestmark = pytest.mark.slow

ADAPTERS = {
    "p4": ("prefix", 4, {}),
    "p7": ("prefix", 7, {"source_prefix": "sentiment : "}),
    "all5": ("prefix_all", 5, {}),
    "q3": ("prompt", 3, {}),
}
TEXTS = [
    "Profit rose .",
    "Sales fell sharply in the quarter .",
    "The board proposes a dividend of EUR 0.50 a share .",
    "Orders grew strongly .",
    "Costs went up .",
    "The deal is worth EUR 30 mn .",
    "Operating profit fell to EUR 1.2 mn .",
    "Net sales decreased .",
]
KEY = "process-test-key"
SERVING = re.compile(r"Serving .* on (http://127\.0\.0\.1:\d+) ")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer, tokenizer_dir):
    return save_seq2seq_adapters(tmp_path_factory, tokenizer, tokenizer_dir, ADAPTERS, "process")


@pytest.fixture(scope="module")
def alone(folders):
    return answers_alone(folders, first="p4")


class Server:
    """`prefix-tuning serve ARGV --port 0` started in a process; `url` once it serves; its output kept."""

    def __init__(self, argv: list[str], env: dict | None = None):
        executable = shutil.which("prefix-tuning")
        if executable is None:
            pytest.fail("`prefix-tuning` is not on PATH: install the package (pip install -e '.[dev]').")
        environment = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        environment.update(env or {})
        self.process = subprocess.Popen(
            [executable, "serve", *argv, "--port", "0", "--access_log", "false"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            cwd=REPO,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.ready = threading.Event()
        self.url = None
        threading.Thread(target=self._read, args=(self.process.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.process.stderr, self.errors), daemon=True).start()
        if not self.ready.wait(300):
            self.stop()
            pytest.fail("the server did not start:\n" + "".join(self.lines + self.errors)[-3000:])

    def _read(self, stream, into: list[str]) -> None:
        for line in stream:
            into.append(line)
            match = SERVING.search(line)
            if match:
                self.url = match.group(1)
                self.ready.set()

    def stop(self, timeout: float = 120) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def metric_values(text: str) -> dict:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_real_server_answers_concurrent_mixed_adapter_requests_as_the_python_api(folders, alone):
    names = list(ADAPTERS)
    # The shipped recipe, its adapters replaced on the command line; the key from the environment.
    argv = [str(REPO / "recipes" / "serve_example.yaml"), "--max_wait_ms", "200"]
    for name in names:
        argv += ["--adapter", f"{name}={folders[name]}"]
    server = Server(argv, env={"PREFIX_TUNING_API_KEY": KEY})
    rng = random.Random(0)
    requests = []
    for index in range(24):
        size = rng.choice([1, 1, 2, 3])
        texts = [rng.choice(TEXTS) for _ in range(size)]
        if size == 1 and index % 2:
            requests.append({"inputs": texts[0], "adapter": rng.choice(names)})
        else:
            requests.append({"inputs": texts, "adapter": [rng.choice([*names, None]) for _ in texts]})
    try:

        async def scenario():
            headers = {"Authorization": f"Bearer {KEY}"}
            async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=120) as client:
                answers = await asyncio.gather(*(client.post("/predict", json=body) for body in requests))
                metrics = (await client.get("/metrics")).text
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as anonymous:
                refused = await anonymous.post("/predict", json=requests[0])
                health = await anonymous.get("/health")
            return answers, metrics, refused, health

        answers, metrics, refused, health = asyncio.run(scenario())
        rows = Counter()
        for body, response in zip(requests, answers):
            assert response.status_code == 200, response.text
            if isinstance(body["inputs"], str):
                assert_same_answer(response.json(), alone(body["inputs"], body["adapter"]))
                rows[body["adapter"]] += 1
                continue
            for text, name, got in zip(body["inputs"], body["adapter"], response.json()):
                assert_same_answer(got, alone(text, name))
                rows[name] += 1
        assert refused.status_code == 401 and health.status_code == 200

        # The Hugging Face Inference API client, unchanged, on one adapter's route.
        from huggingface_hub import InferenceClient

        client = InferenceClient(model=f"{server.url}/adapters/p7", token=KEY)
        answer = client.text_classification(TEXTS[2])
        assert_same_answer([{"label": a.label, "score": a.score} for a in answer], alone(TEXTS[2], "p7"))
        assert [a.label for a in client.text_classification(TEXTS[2], top_k=1)] == [answer[0].label]

        values = metric_values(metrics)
        for name in [*names, None]:
            label = "(base)" if name is None else name
            assert values[("prefix_tuning_serve_rows_total", (("adapter", label),))] == rows[name]
        batches = values[("prefix_tuning_serve_batch_size_count", ())]
        assert values[("prefix_tuning_serve_batch_size_sum", ())] == sum(rows.values())
        assert batches < len(requests)  # concurrent requests shared batches
    finally:
        code = server.stop()
    assert code == 0, "".join(server.errors)[-3000:]


def test_sigterm_refuses_new_connections_answers_those_in_flight_and_exits_0(folders, alone):
    names = ["p4", "q3"]
    # Small batches, so that the requests take a while; a long graceful timeout, so that all of them are answered.
    argv = ["--max_batch_size", "2", "--max_wait_ms", "0", "--graceful_timeout", "600"]
    for name in names:
        argv += ["--adapter", f"{name}={folders[name]}"]
    server = Server(argv)
    requests = [
        {"inputs": [TEXTS[(i + j) % len(TEXTS)] for j in range(32)], "adapter": names[i % 2]} for i in range(8)
    ]

    async def scenario():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            pending = [asyncio.ensure_future(client.post("/predict", json=body)) for body in requests]
            for _ in range(3000):  # until the server has accepted every request
                values = metric_values((await client.get("/metrics")).text)
                accepted = sum(
                    values[("prefix_tuning_serve_adapter_requests_total", (("adapter", n),))] for n in names
                )
                if accepted == len(requests):
                    break
                await asyncio.sleep(0.05)
            assert accepted == len(requests)
            server.process.send_signal(signal.SIGTERM)
            refused_while_busy = False
            for _ in range(400):  # a new connection is refused while the accepted requests are still answered
                try:
                    async with httpx.AsyncClient(base_url=server.url, timeout=5) as fresh:
                        await fresh.get("/health")
                except httpx.ConnectError:
                    refused_while_busy = not all(task.done() for task in pending)
                    break
                await asyncio.sleep(0.05)
            return await asyncio.gather(*pending), refused_while_busy

    started = time.monotonic()
    answers, refused_while_busy = asyncio.run(scenario())
    code = server.process.wait(600)
    assert code == 0, "".join(server.errors)[-3000:]
    assert refused_while_busy, "new connections were still taken, or nothing was left in flight to answer"
    for body, response in zip(requests, answers):
        assert response.status_code == 200, "".join(server.lines + server.errors)[-5000:]
        for text, got in zip(body["inputs"], response.json()):
            assert_same_answer(got, alone(text, body["adapter"]))
    assert "Traceback" not in "".join(server.errors + server.lines)
    assert any("Stopped." in line for line in server.lines), time.monotonic() - started


def test_importing_and_training_import_no_server_package(tmp_path):
    code = f"""
import sys
import prefix_tuning_utils, prefix_tuning_utils.classifier, prefix_tuning_utils.serving, prefix_tuning_utils.serving.cli
from prefix_tuning_utils import cli
cli.main(["--model_name_or_path", "examples/tiny-t5", "--train_file", "examples/quickstart.txt",
          "--label_words", "negative,neutral,positive", "--do_train", "--max_steps", "1", "--save_strategy", "no",
          "--output_dir", {str(tmp_path / "out")!r}, "--report_to", "none", "--disable_tqdm", "true"])
server = sorted(m for m in sys.modules if m.split(".")[0] in ("fastapi", "uvicorn", "starlette", "prometheus_client"))
print("SERVER MODULES:", server)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SERVER MODULES: []" in result.stdout, result.stdout[-2000:]
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


# The outputs docs/serving.md shows (README.md shows one of them), each checked against a server started as they start it.
README_ANSWERS = {
    '{"inputs": "Borealis Bank said its net sales rose 25 percent from a year earlier .", "adapter": "acme"}':
        '[{"label":"negative","score":0.559761643409729},{"label":"neutral","score":0.3894047737121582},'
        '{"label":"positive","score":0.050833508372306824}]',
    '{"inputs": ["Acme Corp will publish its quarterly results on Tuesday .", "Fjord Telecom said its operating profit '
    'fell 40 percent ."], "adapter": ["acme", "globex"], "top_k": 1}':
        '[[{"label":"negative","score":0.48436465859413147}],[{"label":"negative","score":0.6444914937019348}]]',
    '{"inputs": "Profit rose .", "adapter": "initech"}':
        '{"error":"Unknown adapter \'initech\'; this server has acme, globex.","error_type":"unknown_adapter"}',
}  # fmt: skip


def assert_close_json(got, expected) -> None:
    if isinstance(expected, dict) and "score" in expected:
        assert got["label"] == expected["label"] and got["score"] == pytest.approx(expected["score"], abs=1e-5)
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (got, expected)
        for a, b in zip(got, expected):
            assert_close_json(a, b)
    else:
        assert got == expected


def test_readme_serving_example(tmp_path):
    """README.md and docs/serving.md: two quickstart adapters trained and served as shown; the curl bodies answered as shown,
    and the Python API and InferenceClient lines too."""
    import json

    readme = " ".join((REPO / "README.md").read_text().split())
    shown = re.findall(r"-d '([^']*)'", readme)
    assert shown  # the README shows a curl, and each body it shows is one of these, with its answer
    for body in shown:
        assert body in README_ANSWERS and README_ANSWERS[body] in readme
    assert "prefix-tuning serve --adapter acme=/tmp/acme --adapter globex=/tmp/globex" in readme
    readme = " ".join((REPO / "docs" / "serving.md").read_text().split())  # the whole example
    for body, answer in README_ANSWERS.items():
        assert body in readme and answer in readme
    assert "prefix-tuning recipes/quickstart.yaml --output_dir /tmp/globex --num_virtual_tokens 10" in readme
    assert "prefix-tuning serve --adapter acme=/tmp/acme --adapter globex=/tmp/globex" in readme
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name, extra in (("acme", []), ("globex", ["--num_virtual_tokens", "10"])):
        command = [shutil.which("prefix-tuning") or "prefix-tuning", "recipes/quickstart.yaml",
                   "--output_dir", str(tmp_path / name), *extra]  # fmt: skip
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
    server = Server(["--adapter", f"acme={tmp_path / 'acme'}", "--adapter", f"globex={tmp_path / 'globex'}"])
    try:
        for body, answer in README_ANSWERS.items():
            response = httpx.post(f"{server.url}/predict", content=body, headers={"Content-Type": "application/json"})
            assert_close_json(response.json(), json.loads(answer))
        from huggingface_hub import InferenceClient

        text = "Fjord Telecom said its operating profit fell 40 percent ."
        first = InferenceClient(model=f"{server.url}/adapters/globex").text_classification(text)[0]
        assert "TextClassificationOutputElement(label='negative', score=0.6444916129112244)" in readme
        assert first.label == "negative" and first.score == pytest.approx(0.6444916129112244, abs=1e-5)
    finally:
        assert server.stop() == 0
    classify = PrefixClassifier.from_pretrained({"acme": str(tmp_path / "acme"), "globex": str(tmp_path / "globex")})
    texts = ["Acme Corp will publish its quarterly results on Tuesday .", text]
    assert (
        "[{'label': 'negative', 'score': 0.48436465859413147}, {'label': 'negative', 'score': 0.6444914937019348}]"
        in readme
    )
    assert_close_json(
        classify(texts, adapter=["acme", "globex"]),
        [{"label": "negative", "score": 0.48436465859413147}, {"label": "negative", "score": 0.6444914937019348}],
    )
