"""The HTTP server in-process (prefix_tuning_utils/serving): every route through an HTTP client on the ASGI app.

Three tiny seq2seq adapters (two prefixes of different lengths, one prompt-tuning adapter) share one base model; the
app answers through one `PrefixClassifier` holding all three. Every answer is compared with the Python API answering
the same text alone: `PrefixClassifier.from_pretrained(folder)` of that one adapter (peft's own forward), or the bare
base model for `adapter: null`. Batching is observed through a spy on the answer function (the rows of each batch)
and through the metrics' batch-size histogram.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from prefix_tuning_utils.classifier import PrefixClassifier
from prefix_tuning_utils.serving import ServeSettings
from prefix_tuning_utils.serving.app import create_app
from prefix_tuning_utils.serving.batching import BatchFailedError, DynamicBatcher
from prefix_tuning_utils.serving.errors import ServeError
from tests.tiny_adapters import LABELS, answers_alone, assert_same_answer, save_seq2seq_adapters


ADAPTERS = {
    "acme": ("prefix", 4, {}),
    "globex": ("prefix", 7, {"source_prefix": "sentiment : "}),
    "initech": ("prompt", 3, {}),
}
TEXTS = [
    "Profit rose .",
    "Sales fell sharply in the quarter .",
    "The board proposes a dividend of EUR 0.50 a share .",
    "Orders grew strongly .",
    "Costs went up .",
    "The deal is worth EUR 30 mn .",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer, tokenizer_dir):
    return save_seq2seq_adapters(tmp_path_factory, tokenizer, tokenizer_dir, ADAPTERS, "serve")


@pytest.fixture(scope="module")
def classifier(folders):
    return PrefixClassifier.from_pretrained({name: str(folders[name]) for name in ADAPTERS}, device="cpu")


@pytest.fixture(scope="module")
def alone(folders):
    return answers_alone(folders, first="acme")


def call(app, scenario: Callable[[httpx.AsyncClient], Awaitable], headers: dict | None = None):
    """Run `scenario(client)` against `app` inside its lifespan (the batcher drains and stops at the end)."""

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve", headers=headers) as client:
                return await scenario(client)

    return asyncio.run(main())


def metric_values(text: str) -> dict:
    """{(sample name, ((label, value), ...)): value} of a Prometheus text exposition."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def predict_scope() -> dict:
    """The ASGI scope of a `POST /predict`, for tests that play the client's side of the protocol themselves."""
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/predict", "raw_path": b"/predict", "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"serve")], "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }  # fmt: skip


class Spy:
    """The answer function of an app, recording each batch's rows; `gate` (an Event) holds every batch until set;
    a batch holding a text with `poison` in it fails."""

    def __init__(self, classifier, gate: threading.Event | None = None, poison: str | None = None):
        self.classifier, self.gate, self.poison = classifier, gate, poison
        self.batches: list[list[tuple[str, str | None]]] = []
        self.started = threading.Event()

    def __call__(self, texts, adapters):
        self.batches.append(list(zip(texts, adapters)))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(60), "the test never opened the gate"
        if self.poison is not None and any(self.poison in text for text in texts):
            raise RuntimeError("poisoned batch")
        return self.classifier.answer_batch(texts, adapters)


# ---------------------------------------------------------------------------------------------------------- routes
def test_predict_answers_each_input_with_its_adapter(classifier, alone):
    app = create_app(classifier)
    mix = ["globex", "initech", None, "acme", "globex", "acme"]

    async def scenario(client):
        one = await client.post("/predict", json={"inputs": TEXTS[0], "adapter": "globex"})
        many = await client.post("/predict", json={"inputs": TEXTS, "adapter": mix})
        best = await client.post("/predict", json={"inputs": TEXTS[:2], "adapter": "initech", "top_k": 2})
        return one, many, best

    one, many, best = call(app, scenario)
    assert one.status_code == 200 and one.headers["content-type"] == "application/json"
    # A string: one list of every label, best first (TEI's answer); the Python API alone gives the same.
    assert len(one.json()) == 3 and one.json()[0].keys() == {"label", "score"}
    assert_same_answer(one.json(), alone(TEXTS[0], "globex"))
    # A list: one such list per input, in order, each answered by its own adapter (null: the base model).
    answers = many.json()
    assert len(answers) == len(TEXTS)
    for text, name, got in zip(TEXTS, mix, answers):
        assert_same_answer(got, alone(text, name))
    assert [len(labels) for labels in best.json()] == [2, 2]
    for text, got in zip(TEXTS[:2], best.json()):
        assert_same_answer(got, alone(text, "initech")[:2])
    # The adapters answer differently: a row given another row's adapter would not pass.
    assert answers[1] != answers[3]


def test_inference_api_route_speaks_the_hugging_face_text_classification_body(classifier, alone):
    """POST /adapters/NAME answers as the Inference API: a list of label lists, one per input, which is what
    `InferenceClient.text_classification` reads (its `[0]`); the real client is used in test_serve_process.py."""
    app = create_app(classifier)

    async def scenario(client):
        return [
            await client.post("/adapters/acme", json={"inputs": TEXTS[1]}),
            await client.post("/adapters/acme", json={"inputs": TEXTS[1], "parameters": {"top_k": 1}}),
            await client.post("/adapters/initech", json={"inputs": TEXTS[:2], "parameters": {"function_to_apply": "softmax"}}),
            await client.post("/adapters/hooli", json={"inputs": TEXTS[1]}),
            await client.post("/adapters/acme", json={"inputs": TEXTS[1], "parameters": {"function_to_apply": "sigmoid"}}),
        ]  # fmt: skip

    full, top, listed, unknown, sigmoid = call(app, scenario)
    assert full.status_code == 200 and len(full.json()) == 1
    assert_same_answer(full.json()[0], alone(TEXTS[1], "acme"))
    assert top.json() == [full.json()[0][:1]]
    assert [len(labels) for labels in listed.json()] == [3, 3]
    for text, got in zip(TEXTS[:2], listed.json()):
        assert_same_answer(got, alone(text, "initech"))
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": "No adapter 'hooli' on this server; it has acme, globex, initech.",
        "error_type": "unknown_adapter",
    }
    assert sigmoid.status_code == 422
    assert sigmoid.json()["error"] == "`parameters.function_to_apply` must be softmax, or left out."


def test_adapters_health_docs(classifier, folders):
    app = create_app(classifier)

    async def scenario(client):
        return [await client.get(path) for path in ("/adapters", "/adapters/initech", "/adapters/hooli", "/health",
                                                    "/docs", "/openapi.json")]  # fmt: skip

    listing, one, unknown, health, docs, openapi = call(app, scenario)
    body = listing.json()
    assert body["base_model"] == str(folders["__base__"])
    assert (body["task"], body["mode"], body["labels"]) == ("seq2seq", "score", LABELS)
    assert [(a["name"], a["kind"], a["num_virtual_tokens"], a["prefix_scope"]) for a in body["adapters"]] == [
        ("acme", "prefix", 4, "decoder"),
        ("globex", "prefix", 7, "decoder"),
        ("initech", "prompt", 3, None),
    ]
    assert all(a["label_words"] == LABELS and a["source"] == str(folders[a["name"]]) for a in body["adapters"])
    assert {(a["revision"], a["task"]) for a in body["adapters"]} == {("main", "seq2seq")}
    assert one.json() == body["adapters"][2]
    assert unknown.status_code == 404 and unknown.json()["error_type"] == "unknown_adapter"
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = openapi.json()["paths"]
    assert {"/predict", "/adapters/{name}", "/adapters", "/health", "/metrics"} <= set(paths)
    assert "PredictRequest" in json.dumps(paths["/predict"])


# -------------------------------------------------------------------------------------------------------- refusals
REFUSALS = [
    # (body, status, error_type, the message)
    (b'{"inputs": "Profit rose ."', 400, "malformed_json", "The body is not valid JSON at position 26: Expecting ',' delimiter."),
    (b"", 422, "validation", "The body is empty: send a JSON object such as"),
    (b'["Profit rose ."]', 422, "validation", "The body must be a JSON object such as"),
    (b'{"adapter": "acme"}', 422, "validation", "`inputs` is missing;"),
    (b'{"inputs": 3, "adapter": "acme"}', 422, "validation", "`inputs` must be a string or a list of strings."),
    (b'{"inputs": ["a", 3], "adapter": "acme"}', 422, "validation", "`inputs[1]` must be a string."),
    (b'{"inputs": "", "adapter": "acme"}', 422, "validation", "`inputs` is empty: there is nothing to classify."),
    (b'{"inputs": ["a", " "], "adapter": "acme"}', 422, "validation", "`inputs[1]` is empty"),
    (b'{"inputs": [], "adapter": "acme"}', 422, "validation", "`inputs` is an empty list: give at least one text."),
    (b'{"inputs": "a"}', 422, "validation", "Name the adapter: `adapter` is one of acme, globex, initech"),
    (b'{"inputs": "a", "adapter": "hooli"}', 422, "unknown_adapter", "Unknown adapter 'hooli'; this server has acme"),
    (b'{"inputs": ["a", "b"], "adapter": ["acme", "hooli"]}', 422, "unknown_adapter", "Unknown adapter 'hooli' (input 1)"),
    (b'{"inputs": ["a", "b"], "adapter": ["acme"]}', 422, "validation", "`adapter` has 1 names for 2 inputs"),
    (b'{"inputs": "a", "adapter": 7}', 422, "validation", "`adapter` must be an adapter name, or a list of names"),
    (b'{"inputs": "a", "adapters": "acme"}', 422, "validation", "Unknown field `adapters`. Did you mean `adapter`?"),
    (b'{"inputs": "a", "adapter": "acme", "top_k": 0}', 422, "validation", "`top_k` must be a positive integer"),
    (b'{"inputs": "a", "adapter": "acme", "top_k": "2"}', 422, "validation", "`top_k` must be a positive integer"),
    (json.dumps({"inputs": ["a"] * 5, "adapter": "acme"}).encode(), 413, "too_large",
     "`inputs` has 5 texts; this server answers at most 4 per request (--max_inputs_per_request)"),
    (json.dumps({"inputs": ["a", "b" * 41], "adapter": "acme"}).encode(), 413, "too_large",
     "`inputs[1]` has 41 characters; this server reads at most 40 per input (--max_chars_per_input)."),
]  # fmt: skip


@pytest.mark.parametrize("body, status, kind, message", REFUSALS, ids=[f"{r[2]}-{i}" for i, r in enumerate(REFUSALS)])
def test_bad_requests_get_a_json_error_naming_the_problem(classifier, body, status, kind, message):
    spy = Spy(classifier)
    app = create_app(classifier, ServeSettings(max_inputs_per_request=4, max_chars_per_input=40), answer=spy)

    async def scenario(client):
        refused = await client.post("/predict", content=body, headers={"content-type": "application/json"})
        fine = await client.post("/predict", json={"inputs": "Profit rose .", "adapter": "acme"})
        return refused, fine, (await client.get("/metrics")).text

    refused, fine, metrics = call(app, scenario)
    assert refused.status_code == status, refused.text
    assert refused.json()["error_type"] == kind and refused.json()["error"].startswith(message), refused.json()
    assert len(refused.json()["error"].splitlines()) == 1
    # Nothing of the refused request reached the model; the server answers the next one.
    assert spy.batches == [[("Profit rose .", "acme")]]
    assert fine.status_code == 200
    values = metric_values(metrics)
    assert values[("prefix_tuning_serve_errors_total", (("kind", kind),))] == 1
    assert values[("prefix_tuning_serve_requests_total", (("code", str(status)), ("route", "/predict")))] == 1


def test_not_found_and_wrong_method_are_json(classifier):
    app = create_app(classifier)

    async def scenario(client):
        return await client.get("/nowhere"), await client.get("/predict"), await client.post("/health")

    missing, get_predict, post_health = call(app, scenario)
    assert missing.status_code == 404 and missing.json() == {
        "error": "No route /nowhere; see /docs.",
        "error_type": "not_found",
    }
    assert get_predict.status_code == 405 and get_predict.json()["error_type"] == "method_not_allowed"
    assert post_health.status_code == 405


def test_api_key_guards_every_route_but_health(classifier):
    key = "s3cret-key-for-tests"
    app = create_app(classifier, ServeSettings(api_key=key))
    body = {"inputs": "Profit rose .", "adapter": "acme"}

    async def scenario(client):
        results = {
            "none": await client.post("/predict", json=body),
            "wrong": await client.post("/predict", json=body, headers={"Authorization": "Bearer s3cret-key-for-test"}),
            "not bearer": await client.post("/predict", json=body, headers={"Authorization": f"Basic {key}"}),
            "right": await client.post("/predict", json=body, headers={"Authorization": f"Bearer {key}"}),
            "lower-case scheme": await client.get("/adapters", headers={"authorization": f"bearer {key}"}),
            "metrics": await client.get("/metrics"),
            "docs": await client.get("/docs"),
            "unknown route": await client.get("/nowhere"),
            "health": await client.get("/health"),
            # refused before its body is read: a large body without the key costs nothing
            "large": await client.post("/predict", content=b"x" * 10_000_000),
        }
        return results

    results = call(app, scenario)
    for name in ("none", "wrong", "not bearer", "metrics", "docs", "unknown route", "large"):
        response = results[name]
        assert response.status_code == 401, name
        assert response.json() == {
            "error": "Missing or wrong API key: send the header `Authorization: Bearer <key>`.",
            "error_type": "unauthorized",
        }
        assert response.headers["www-authenticate"] == "Bearer"
    assert results["right"].status_code == 200 and results["lower-case scheme"].status_code == 200
    assert results["health"].status_code == 200


# -------------------------------------------------------------------------------------------------------- batching
def test_concurrent_requests_share_one_mixed_batch(classifier, alone):
    """Requests that arrive together (within --max_wait_ms of the first), for different adapters, are answered in one
    forward; each gets its own rows back, in order."""
    spy = Spy(classifier)
    requests = [
        {"inputs": TEXTS[0], "adapter": "acme"},
        {"inputs": TEXTS[1:3], "adapter": ["globex", "initech"]},
        {"inputs": [TEXTS[3], TEXTS[4], TEXTS[5]], "adapter": "initech"},
        {"inputs": TEXTS[2], "adapter": "globex"},
    ]
    rows = 1 + 2 + 3 + 1
    # The batch is answered as soon as it is full; the long wait only makes sure that it is not answered before.
    app = create_app(classifier, ServeSettings(max_batch_size=rows, max_wait_ms=10_000), answer=spy)

    async def scenario(client):
        pending = []
        for body in requests:  # arriving one after another, within the wait of the first
            pending.append(asyncio.ensure_future(client.post("/predict", json=body)))
            await asyncio.sleep(0.05)
        answers = await asyncio.gather(*pending)
        return answers, (await client.get("/metrics")).text

    answers, metrics = call(app, scenario)
    assert len(spy.batches) == 1 and len(spy.batches[0]) == rows
    assert {name for _, name in spy.batches[0]} == {"acme", "globex", "initech"}
    for body, response in zip(requests, answers):
        texts = [body["inputs"]] if isinstance(body["inputs"], str) else body["inputs"]
        names = [body["adapter"]] * len(texts) if isinstance(body["adapter"], str) else body["adapter"]
        got = [response.json()] if isinstance(body["inputs"], str) else response.json()
        for text, name, labels in zip(texts, names, got):
            assert_same_answer(labels, alone(text, name))
    values = metric_values(metrics)
    assert values[("prefix_tuning_serve_batch_size_count", ())] == 1
    assert values[("prefix_tuning_serve_batch_size_sum", ())] == rows
    assert values[("prefix_tuning_serve_batch_size_bucket", (("le", "4.0"),))] == 0
    assert values[("prefix_tuning_serve_batch_size_bucket", (("le", "7.0"),))] == 1
    assert values[("prefix_tuning_serve_batch_adapters_sum", ())] == 3


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(6000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def test_a_large_request_is_split_and_cannot_hold_back_a_small_one(classifier, alone):
    """10 rows with batches of 4: three batches, the request's answers in its order. A 1-row request that arrives
    while the first batch runs is in the second: rows are taken from the waiting requests in turn."""
    gate = threading.Event()
    spy = Spy(classifier, gate=gate)
    app = create_app(classifier, ServeSettings(max_batch_size=4, max_wait_ms=0), answer=spy)
    large = [f"{TEXTS[i % len(TEXTS)]} ({i})" for i in range(10)]
    names = ["acme", "globex", "initech", None, "acme"] * 2

    async def scenario(client):
        first = asyncio.ensure_future(client.post("/predict", json={"inputs": large, "adapter": names}))
        await until(spy.started.is_set)
        small = asyncio.ensure_future(client.post("/predict", json={"inputs": "Profit rose .", "adapter": "globex"}))
        await until(lambda: app.state.batcher.queued_rows == 6 + 1)
        gate.set()
        return await first, await small

    big, small = call(app, scenario)
    rows = list(zip(large, names))
    assert spy.batches == [rows[:4], [rows[4], ("Profit rose .", "globex"), rows[5], rows[6]], rows[7:]]
    for text, name, labels in zip(large, names, big.json()):
        assert_same_answer(labels, alone(text, name))
    assert_same_answer(small.json(), alone("Profit rose .", "globex"))


def test_a_failing_batch_fails_only_its_requests(classifier, alone):
    spy = Spy(classifier, poison="POISON")
    app = create_app(classifier, ServeSettings(max_batch_size=2, max_wait_ms=10_000), answer=spy)

    async def scenario(client):
        poisoned = asyncio.ensure_future(client.post("/predict", json={"inputs": "POISON .", "adapter": "acme"}))
        await until(lambda: app.state.batcher.queued_rows == 1)
        neighbour = asyncio.ensure_future(client.post("/predict", json={"inputs": TEXTS[0], "adapter": "globex"}))
        await until(lambda: len(spy.batches) == 1)
        later = await client.post("/predict", json={"inputs": TEXTS[1:3], "adapter": "initech"})
        after = await client.post("/predict", json={"inputs": [TEXTS[3], TEXTS[4]], "adapter": "acme"})
        return await poisoned, await neighbour, later, after

    poisoned, neighbour, later, after = call(app, scenario)
    assert spy.batches[0] == [("POISON .", "acme"), (TEXTS[0], "globex")]
    assert [len(batch) for batch in spy.batches] == [2, 2, 2]
    for response in (poisoned, neighbour):  # the two requests of the failed batch
        assert response.status_code == 500
        assert response.json() == {
            "error": "the batch holding this request failed: RuntimeError: poisoned batch",
            "error_type": "backend",
        }
    assert later.status_code == 200 and after.status_code == 200  # the next batches, and the server, go on
    for text, labels in zip(TEXTS[1:3], later.json()):
        assert_same_answer(labels, alone(text, "initech"))
    for text, labels in zip(TEXTS[3:5], after.json()):
        assert_same_answer(labels, alone(text, "acme"))


def test_a_full_queue_refuses_with_429_and_shutdown_answers_what_is_queued(classifier):
    gate = threading.Event()
    spy = Spy(classifier, gate=gate)
    settings = ServeSettings(max_batch_size=2, max_wait_ms=0, max_inputs_per_request=3, max_queued_rows=4)
    app = create_app(classifier, settings, answer=spy)

    async def scenario(client):
        held = asyncio.ensure_future(client.post("/predict", json={"inputs": TEXTS[:2], "adapter": "acme"}))
        await until(spy.started.is_set)  # the first batch (2 rows) is in the worker, held by the gate
        queued = [
            asyncio.ensure_future(client.post("/predict", json={"inputs": TEXTS[2:5], "adapter": "globex"})),
            asyncio.ensure_future(client.post("/predict", json={"inputs": TEXTS[5], "adapter": "initech"})),
        ]
        await until(lambda: app.state.batcher.queued_rows == 4)
        full = await client.post("/predict", json={"inputs": TEXTS[0], "adapter": "acme"})
        metrics = (await client.get("/metrics")).text
        closing = asyncio.ensure_future(app.state.batcher.close())
        await until(lambda: app.state.batcher.closing)
        refused = await client.post("/predict", json={"inputs": TEXTS[0], "adapter": "acme"})
        health = await client.get("/health")
        gate.set()
        answered = await asyncio.gather(held, *queued)
        await closing
        return full, metrics, refused, health, answered

    full, metrics, refused, health, answered = call(app, scenario)
    assert full.status_code == 429
    assert full.json() == {
        "error": "The server is overloaded: 4 rows are waiting (at most 4). Retry later, or send fewer inputs per "
        "request.",
        "error_type": "overloaded",
    }
    assert metric_values(metrics)[("prefix_tuning_serve_queued_rows", ())] == 4
    assert refused.status_code == 503 and refused.json()["error_type"] == "shutting_down"
    assert health.status_code == 503
    # Everything accepted before the shutdown is answered.
    assert [response.status_code for response in answered] == [200, 200, 200]
    assert sum(len(batch) for batch in spy.batches) == 2 + 3 + 1


# ----------------------------------------------------------------------------------------------- body and metrics
def test_body_limits(classifier):
    settings = ServeSettings(max_inputs_per_request=2, max_chars_per_input=10, body_timeout_s=0.3)
    limit = settings.max_request_bytes
    assert limit == 2 * (6 * 10 + 1024) + 65536  # the documented formula
    app = create_app(classifier, settings)

    async def chunks():
        for _ in range(limit // 1000 + 2):
            yield b" " * 1000

    async def scenario(client):
        declared = await client.post("/predict", content=b" " * (limit + 1))
        streamed = await client.post("/predict", content=chunks())  # no Content-Length: counted as it comes
        return declared, streamed

    declared, streamed = call(app, scenario)
    assert declared.status_code == 413 and declared.json()["error"].startswith(
        f"The request body has {limit + 1} bytes; this server reads at most {limit}"
    )
    assert streamed.status_code == 413 and streamed.json()["error"].startswith("The request body has more than")
    assert declared.headers["connection"] == "close"

    # A client that sends part of its body and then nothing: 408 after body_timeout_s. One that hangs up: dropped.
    async def raw(messages):
        sent = []
        queue = list(messages)

        async def receive():
            if queue:
                return queue.pop(0)
            await asyncio.sleep(3600)

        async def send(message):
            sent.append(message)

        await asyncio.wait_for(app(predict_scope(), receive, send), 10)
        return sent

    slow = asyncio.run(raw([{"type": "http.request", "body": b'{"inputs": ', "more_body": True}]))
    assert slow[0]["status"] == 408
    assert json.loads(slow[1]["body"]) == {
        "error": "The request body did not arrive within 0.3 s.",
        "error_type": "body_timeout",
    }
    gone = asyncio.run(raw([{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]))
    assert gone == []  # nothing sent to a client that left

    async def count(client):
        return (await client.get("/metrics")).text

    values = metric_values(call(app, count))
    assert values[("prefix_tuning_serve_errors_total", (("kind", "body_timeout"),))] == 1
    assert values[("prefix_tuning_serve_errors_total", (("kind", "disconnected"),))] == 1
    assert values[("prefix_tuning_serve_errors_total", (("kind", "too_large"),))] == 2


def test_metrics_count_requests_rows_and_errors(classifier):
    app = create_app(classifier, ServeSettings(max_wait_ms=0))

    async def scenario(client):
        await client.post("/predict", json={"inputs": TEXTS[:3], "adapter": ["acme", "acme", None]})
        await client.post("/predict", json={"inputs": TEXTS[3], "adapter": "initech"})
        await client.post("/adapters/acme", json={"inputs": TEXTS[:2]})
        await client.post("/predict", json={"inputs": TEXTS[0], "adapter": "hooli"})
        await client.get("/adapters")
        return await client.get("/metrics")

    response = call(app, scenario)
    assert response.headers["content-type"].startswith("text/plain; version=")
    values = metric_values(response.text)

    def value(name, **labels):
        return values[(f"prefix_tuning_serve_{name}", tuple(sorted(labels.items())))]

    assert value("rows_total", adapter="acme") == 2 + 2
    assert value("rows_total", adapter="(base)") == 1
    assert value("rows_total", adapter="initech") == 1
    assert value("rows_total", adapter="globex") == 0  # every loaded adapter is listed from the start
    assert value("adapter_requests_total", adapter="acme") == 2  # a request naming acme twice counts once
    assert value("requests_total", route="/predict", code="200") == 2
    assert value("requests_total", route="/predict", code="422") == 1
    assert value("requests_total", route="/adapters/{name}", code="200") == 1
    assert value("requests_total", route="/adapters", code="200") == 1
    assert value("errors_total", kind="unknown_adapter") == 1
    assert value("batches_total", outcome="ok") == 3 and value("batch_size_sum") == 3 + 1 + 2
    assert value("queue_wait_seconds_count") == 6 and value("request_seconds_count", route="/predict") == 3
    assert value("adapters") == 3 and value("queued_rows") == 0
    assert ("prefix_tuning_serve_rows_total", (("adapter", "hooli"),)) not in values  # a client's name is no label


def test_generate_mode_answers_with_the_written_label(folders):
    names = ["acme", "initech"]
    generate = PrefixClassifier.from_pretrained({n: str(folders[n]) for n in names}, mode="generate", device="cpu")
    app = create_app(generate)

    async def scenario(client):
        return (
            await client.post("/predict", json={"inputs": TEXTS[:2], "adapter": names}),
            await client.post("/predict", json={"inputs": TEXTS[0], "adapter": "acme", "top_k": 2}),
        )

    answered, top_2 = call(app, scenario)
    for text, name, got in zip(TEXTS[:2], names, answered.json()):
        expected = PrefixClassifier.from_pretrained(str(folders[name]), mode="generate")(text)
        assert len(got) == 1 and got[0].keys() == {"label", "score", "answer"}
        assert got[0]["answer"] == expected[0]["answer"] and got[0]["label"] == expected[0]["label"]
        assert got[0]["score"] == pytest.approx(expected[0]["score"], abs=1e-5)
    assert top_2.status_code == 422 and top_2.json()["error"].startswith("`top_k` applies to score mode")


def test_create_app_needs_named_adapters(folders):
    with pytest.raises(ValueError, match=r"create_app serves named adapters: load them with PrefixClassifier"):
        create_app(PrefixClassifier.from_pretrained(str(folders["acme"])))


def test_a_client_that_hangs_up_while_waiting_loses_its_waiting_rows_and_nobody_else_is_touched(classifier, alone):
    """The route watches for the client's disconnect while its rows wait: a client that hangs up gets nothing sent,
    its rows that are not in a batch yet are never answered, and the batch that was running is answered as usual."""
    gate = threading.Event()
    spy = Spy(classifier, gate=gate)
    app = create_app(classifier, ServeSettings(max_batch_size=1, max_wait_ms=0), answer=spy)
    sent = []

    async def hanging_client(hang_up: asyncio.Event) -> None:
        body = json.dumps({"inputs": TEXTS[1:3], "adapter": "globex"}).encode()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop(0)
            await hang_up.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await app(predict_scope(), receive, send)

    async def scenario(client):
        running = asyncio.ensure_future(client.post("/predict", json={"inputs": TEXTS[0], "adapter": "acme"}))
        await until(spy.started.is_set)  # the first request's batch runs, held by the gate
        hang_up = asyncio.Event()
        leaving = asyncio.ensure_future(hanging_client(hang_up))
        await until(lambda: app.state.batcher.queued_rows == 2)
        hang_up.set()
        await leaving
        gate.set()
        return await running, (await client.get("/metrics")).text

    running, metrics = call(app, scenario)
    assert spy.batches == [[(TEXTS[0], "acme")]]  # the hung-up client's rows never reached the model
    assert_same_answer(running.json(), alone(TEXTS[0], "acme"))
    assert [message.get("status") for message in sent if message["type"] == "http.response.start"] in ([], [499])
    values = metric_values(metrics)
    assert values[("prefix_tuning_serve_errors_total", (("kind", "disconnected"),))] == 1
    assert values[("prefix_tuning_serve_requests_total", (("code", "499"), ("route", "/predict")))] == 1


# --------------------------------------------------------------------------------------------- the batcher itself
def test_batcher_drops_the_waiting_rows_of_a_request_given_up():
    """A request cancelled before its rows are batched loses them (no wasted forward); one cancelled while its
    rows are in a running batch changes nothing for the other requests of that batch."""
    gate = threading.Event()
    batches = []

    def answer(texts, adapters):
        batches.append(list(texts))
        if len(batches) == 1:
            assert gate.wait(60)
        return [[{"label": text, "score": 1.0}] for text in texts]

    async def scenario():
        batcher = DynamicBatcher(answer, max_batch_size=3, max_wait_ms=0)
        first = batcher.enqueue(["a1", "a2"], ["x", "x"])
        neighbour = batcher.enqueue(["b1"], ["y"])
        await until(lambda: bool(batches))
        assert batches == [["a1", "b1", "a2"]]
        waiting = batcher.enqueue(["c1", "c2"], ["x", "x"])
        kept = batcher.enqueue(["d1"], ["y"])
        first.cancel()  # in the running batch
        waiting.cancel()  # not batched yet
        gate.set()
        assert await neighbour == [[{"label": "b1", "score": 1.0}]]
        assert await kept == [[{"label": "d1", "score": 1.0}]]
        await batcher.close()
        with pytest.raises(ServeError, match="shutting down"):
            batcher.enqueue(["e"], ["x"])

    asyncio.run(scenario())
    assert batches == [["a1", "b1", "a2"], ["d1"]]


def test_rows_arriving_within_max_wait_share_a_batch_and_a_full_batch_waits_for_nothing():
    """The batcher waits up to max_wait_ms after the oldest waiting row for more rows (a second request 20 ms later
    joins the first's batch when the wait is 0.8 s), and not at all once max_batch_size rows wait (a wait of 10
    minutes is never felt). The metrics observer hears of each batch: its rows' adapters, how long each row waited
    (at least the 20 ms the second request came later for the first row), how long the batch took, and that it
    went well."""
    batches, observed = [], []

    class Observer:
        def batch(self, adapters, waits, seconds, ok):
            observed.append((list(adapters), list(waits), seconds, ok))

    def answer(texts, adapters):
        batches.append(list(texts))
        return [[{"label": text, "score": 1.0}] for text in texts]

    async def scenario():
        patient = DynamicBatcher(answer, max_batch_size=8, max_wait_ms=800, observer=Observer())
        first = patient.enqueue(["a"], ["x"])
        await asyncio.sleep(0.02)
        second = patient.enqueue(["b"], ["y"])
        await asyncio.wait_for(asyncio.gather(first, second), 60)
        await patient.close()
        full = DynamicBatcher(answer, max_batch_size=2, max_wait_ms=600_000)
        await asyncio.wait_for(full.submit(["c", "d"], ["x", "y"]), 60)
        await full.close()

    asyncio.run(scenario())
    assert batches == [["a", "b"], ["c", "d"]]
    [(adapters, waits, seconds, ok)] = observed
    assert adapters == ["x", "y"] and ok is True
    assert 0.02 <= waits[0] < 60 and 0 <= waits[1] <= waits[0] and 0 <= seconds < 60


def test_what_the_batcher_refuses_is_named():
    """Rows without one adapter each, a request while shutting down (503), and one after the worker stopped (never
    expected; 503, not a request left waiting for ever): each refused with its kind and message."""

    with pytest.raises(ValueError) as error:
        DynamicBatcher(lambda texts, adapters: [], max_batch_size=0)
    assert str(error.value) == "max_batch_size must be at least 1, got 0."

    async def scenario():
        batcher = DynamicBatcher(lambda texts, adapters: [[{"label": "ok"}] for _ in texts], max_wait_ms=0)
        for texts, adapters, counts in ((["a", "b"], ["x"], "got 1 for 2"), ([], [], "got 0 for 0")):
            with pytest.raises(ValueError) as error:
                batcher.enqueue(texts, adapters)
            assert str(error.value) == f"A request needs one adapter per text, and texts: {counts}."
        assert await batcher.submit(["a"], ["x"]) == [[{"label": "ok"}]]
        batcher._task.cancel()  # the worker gone while the server runs on
        with pytest.raises(asyncio.CancelledError):
            await batcher._task
        with pytest.raises(ServeError) as error:
            batcher.enqueue(["a"], ["x"])
        assert (error.value.kind, error.value.status, error.value.message) == (
            "backend", 503, "The batching worker has stopped; restart the server."
        )  # fmt: skip
        closed = DynamicBatcher(lambda texts, adapters: [], max_wait_ms=0)
        await closed.close()
        with pytest.raises(ServeError) as error:
            closed.enqueue(["a"], ["x"])
        assert (error.value.kind, error.value.status, error.value.message) == (
            "shutting_down", 503, "The server is shutting down and takes no new requests."
        )  # fmt: skip

    asyncio.run(scenario())


def test_a_fault_in_the_batcher_or_its_metrics_strands_no_request(caplog):
    """The metrics observer failing after a batch: its requests are answered all the same (the failure is logged).
    The batcher's own loop failing: the requests waiting get an error at once, none waits for ever, and the next
    request is answered."""

    class BrokenMetrics:
        calls = 0

        def batch(self, adapters, waits, seconds, ok):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("metrics broke")

    def answer(texts, adapters):
        return [[{"label": text, "score": 1.0}] for text in texts]

    async def scenario():
        batcher = DynamicBatcher(answer, max_wait_ms=0, observer=BrokenMetrics())
        assert await asyncio.wait_for(batcher.submit(["a"], ["x"]), 60) == [[{"label": "a", "score": 1.0}]]
        take = batcher._take

        def broken_take():
            batcher._take = take
            raise RuntimeError("take broke")

        batcher._take = broken_take
        with pytest.raises(BatchFailedError) as error:
            await asyncio.wait_for(batcher.submit(["b"], ["x"]), 60)
        assert str(error.value) == "the batcher failed: RuntimeError: take broke"
        assert batcher.queued_rows == 0
        assert await asyncio.wait_for(batcher.submit(["c"], ["x"]), 60) == [[{"label": "c", "score": 1.0}]]
        await batcher.close()

    with caplog.at_level("ERROR", logger="prefix_tuning_utils.serving.batching"):
        asyncio.run(scenario())
    assert [record.getMessage() for record in caplog.records] == [
        "Recording a batch's metrics failed; its requests are answered as usual.",
        "The batcher failed; the requests waiting are answered with an error.",
    ]


def test_batcher_survives_a_wrong_answer_count():
    """A batch whose answer function fails: its requests get the error (the cause chained), the metrics hear of a
    failed batch, and the next batch is answered."""
    observed = []

    class Observer:
        def batch(self, adapters, waits, seconds, ok):
            observed.append((list(adapters), len(waits), ok))

    async def scenario():
        batcher = DynamicBatcher(lambda texts, adapters: [], max_batch_size=4, max_wait_ms=0, observer=Observer())
        with pytest.raises(BatchFailedError, match="the answer function gave 0 answers for 1 rows") as error:
            await asyncio.wait_for(batcher.submit(["a"], ["x"]), 60)
        assert isinstance(error.value.__cause__, RuntimeError)
        assert str(error.value.__cause__) == "the answer function gave 0 answers for 1 rows"
        batcher.answer = lambda texts, adapters: [[{"label": "ok"}] for _ in texts]
        assert await batcher.submit(["b"], [None]) == [[{"label": "ok"}]]
        await batcher.close()

    asyncio.run(scenario())
    assert observed == [(["x"], 1, False), ([None], 1, True)]


def test_requests_cancelled_by_the_end_of_a_graceful_shutdown_get_a_json_503(classifier):
    """When --graceful_timeout has passed, uvicorn cancels the requests still running: each is told so in JSON."""
    gate = threading.Event()
    spy = Spy(classifier, gate=gate)
    app = create_app(classifier, ServeSettings(max_wait_ms=0), answer=spy)

    async def scenario(client):
        # Cancelled while the server runs on (not shutting down): a cancellation, no answer made up.
        cancelled = asyncio.ensure_future(client.post("/predict", json={"inputs": TEXTS[1], "adapter": "acme"}))
        await until(spy.started.is_set)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        gate.set()
        await until(lambda: app.state.batcher.queued_rows == 0 and len(spy.batches) == 1)
        gate.clear()
        spy.started.clear()
        running = asyncio.ensure_future(client.post("/predict", json={"inputs": TEXTS[0], "adapter": "acme"}))
        await until(spy.started.is_set)
        closing = asyncio.ensure_future(app.state.batcher.close())
        await until(lambda: app.state.batcher.closing)
        running.cancel()  # what uvicorn does to the requests still running at the graceful timeout
        response = await running
        gate.set()
        await closing
        return response

    response = call(app, scenario)
    assert response.status_code == 503
    assert response.json() == {
        "error": "The server shut down before answering this request; retry.",
        "error_type": "shutting_down",
    }


def test_the_server_loads_with_the_settings_dtype_and_mode(folders, monkeypatch):
    import torch

    from prefix_tuning_utils import precision
    from prefix_tuning_utils.serving.server import load_classifier

    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "native")  # bf16 is refused on an AVX2-only CPU

    settings = ServeSettings(adapters={"acme": str(folders["acme"]), "initech": str(folders["initech"])},
                             mode="generate", dtype="bfloat16", device="cpu")  # fmt: skip
    loaded = load_classifier(settings)
    assert loaded.adapter_names == ["acme", "initech"] and loaded.mode == "generate"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_listening_beyond_loopback_without_a_key_is_warned(classifier, monkeypatch, caplog):
    """`serve` binds, builds the app and runs uvicorn (replaced here: nothing is served); without an API key on a
    non-loopback address it says, in the log, that anyone who reaches the port can use it."""
    from prefix_tuning_utils.serving import server

    ran = []
    monkeypatch.setattr(server._Server, "run", lambda self, sockets: ran.append(sockets[0].getsockname()))
    with caplog.at_level("WARNING", logger="prefix_tuning_utils.serving.server"):
        server.serve(ServeSettings(host="0.0.0.0", port=0), classifier)
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        caplog.clear()
        server.serve(ServeSettings(host="0.0.0.0", port=0, api_key="k"), classifier)
        server.serve(ServeSettings(port=0), classifier)
        quiet = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(ran) == 3 and ran[0][0] == "0.0.0.0" and ran[2][0] == "127.0.0.1"
    assert warned == [
        "Listening on 0.0.0.0 without an API key: anyone who can reach this port can use the server. Set "
        "PREFIX_TUNING_API_KEY (or --api_key), or listen on 127.0.0.1 behind a proxy."
    ]
    assert quiet == []
