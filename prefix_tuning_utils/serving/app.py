"""The HTTP routes: :func:`create_app` puts a loaded :class:`~prefix_tuning_utils.classifier.PrefixClassifier`
behind FastAPI.

* ``POST /predict``: text-embeddings-inference's classification route, with ``adapter`` (a name, or one per input);
* ``POST /adapters/{name}``: the Hugging Face Inference API's text-classification route for one adapter, so that
  ``InferenceClient(model="http://host:port/adapters/NAME").text_classification(text)`` works unchanged;
* ``GET /adapters`` (and ``GET /adapters/{name}``): the base model, the mode and each adapter's kind, label words and
  prefix length; ``GET /health``; ``GET /metrics`` (Prometheus text); ``GET /docs`` (OpenAPI).

Every answering route hands its rows to one :class:`~.batching.DynamicBatcher`, so rows of concurrent requests, for
any adapters, share a batch. Every refusal is a JSON error naming the problem (:mod:`.errors`); the API key, the body
limits and the request metrics are :class:`~.guard.RequestGuard`'s.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .batching import AnswerFunction, BatchFailedError, DynamicBatcher
from .errors import KINDS, ServeError
from .guard import RequestGuard
from .metrics import CONTENT_TYPE_LATEST, ServeMetrics
from .schemas import (
    AdapterInfo,
    AdaptersResponse,
    ErrorResponse,
    HealthResponse,
    InferenceRequest,
    Prediction,
    PredictRequest,
)
from .settings import ServeSettings


logger = logging.getLogger(__name__)

__all__ = ["create_app", "describe_adapters"]

ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "The body is not JSON"),
        (401, "Missing or wrong API key"),
        (404, "Unknown adapter route"),
        (413, "Too many inputs, too many characters, or too large a body"),
        (422, "The body is not what the route takes (e.g. an empty input, an unknown adapter in /predict)"),
        (429, "Too many rows waiting"),
        (500, "The batch holding the request failed"),
        (503, "Shutting down"),
    )
}
# The fields of the request bodies, and what each must be (the one-line messages of a 422).
FIELD_HINTS = {
    "inputs": "must be a string or a list of strings",
    "adapter": "must be an adapter name, or a list of names (null: the base model), one per input",
    "top_k": "must be a positive integer, or null for every label",
    "parameters": 'must be an object such as {"top_k": 2}',
    "function_to_apply": "must be softmax, or left out",
}
ITEM_HINTS = {"inputs": "must be a string", "adapter": "must be an adapter name, or null for the base model"}
BODY_EXAMPLE = '{"inputs": "Profit rose .", "adapter": "NAME"}'


# --- the checks of a request (one ServeError each, naming what to change) ---------------------------------------------


def check_inputs(inputs: str | list[str], settings: ServeSettings) -> tuple[list[str], bool]:
    """(the texts, whether one text was sent bare) within the server's limits."""
    single = isinstance(inputs, str)
    texts = [inputs] if single else list(inputs)
    if not texts:
        raise ServeError("validation", "`inputs` is an empty list: give at least one text.")
    if len(texts) > settings.max_inputs_per_request:
        raise ServeError(
            "too_large",
            f"`inputs` has {len(texts)} texts; this server answers at most {settings.max_inputs_per_request} per "
            "request (--max_inputs_per_request): split the request.",
        )
    for index, text in enumerate(texts):
        where = "`inputs`" if single else f"`inputs[{index}]`"
        if not text.strip():
            raise ServeError("validation", f"{where} is empty: there is nothing to classify.")
        if len(text) > settings.max_chars_per_input:
            raise ServeError(
                "too_large",
                f"{where} has {len(text)} characters; this server reads at most {settings.max_chars_per_input} "
                "per input (--max_chars_per_input).",
            )
    return texts, single


def row_adapters(adapter, count: int, names: list[str], has_bank: bool) -> list[str | None]:
    """One adapter name per row (None: the base model) from a request's `adapter`, checked against `names`."""
    if adapter is None:
        if len(names) > 1:
            raise ServeError(
                "validation",
                f"Name the adapter: `adapter` is one of {', '.join(names)}, or a list, one per input.",
            )
        return [names[0]] * count
    rows = [adapter] * count if isinstance(adapter, str) else list(adapter)
    if len(rows) != count:
        raise ServeError(
            "validation", f"`adapter` has {len(rows)} names for {count} inputs: give one per input, or one name."
        )
    for index, name in enumerate(rows):
        if name is None and not has_bank:
            raise ServeError(
                "validation",
                f"`adapter[{index}]` is null (the base model), but this server holds {names[0]} alone, not a "
                "bank of prefix or prompt adapters over a base model.",
            )
        if name is not None and name not in names:
            raise ServeError(
                "unknown_adapter",
                f"Unknown adapter {name!r}{'' if isinstance(adapter, str) else f' (input {index})'}; this server "
                f"has {', '.join(names)}.",
                status=422,
            )
    return rows


def check_top_k(top_k: int | None, mode: str) -> int | None:
    if mode == "generate" and top_k not in (None, 1):
        raise ServeError(
            "validation", "`top_k` applies to score mode; this server generates one answer per input (top_k 1)."
        )
    return top_k


def ranked(answers: list[list[dict]], top_k: int | None) -> list[list[dict]]:
    return [labels[:top_k] if top_k is not None else labels for labels in answers]


def create_app(classifier, settings: ServeSettings | None = None, *, answer: AnswerFunction | None = None) -> FastAPI:
    """The app serving `classifier` (a ``PrefixClassifier`` of named adapters) under `settings`.

    `answer` replaces the function a batch is answered with (default: ``classifier.answer_batch``; the benchmark
    gives a baseline here, tests a spy); it takes the batch's texts and one adapter name per text.
    """
    settings = settings or ServeSettings()
    names = list(classifier.adapter_names)
    if not names:
        raise ValueError(
            "create_app serves named adapters: load them with PrefixClassifier.from_pretrained({name: folder or Hub "
            "id, ...})."
        )
    metrics = ServeMetrics(names, settings.max_batch_size)
    batcher = DynamicBatcher(
        answer or functools.partial(classifier.answer_batch, with_scores=True),
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queued_rows=settings.max_queued_rows,
        observer=metrics,
    )
    metrics.watch_queue(lambda: batcher.queued_rows)
    description = describe_adapters(classifier)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await batcher.close()  # after uvicorn has answered every request in flight: the queue is drained

    app = FastAPI(
        title="prefix-tuning serve",
        version=__version__,
        summary="Many prefix-tuned adapters of one frozen model, answered together in mixed batches.",
        lifespan=lifespan,
    )
    app.state.batcher, app.state.metrics, app.state.classifier = batcher, metrics, classifier

    async def answer_rows(request: Request, texts: list[str], adapters: list[str | None]):
        """The rows' answers from the batcher, or None when the client hung up first (its waiting rows dropped)."""
        future = batcher.enqueue(texts, adapters)
        metrics.named(adapters)
        hung_up = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({future, hung_up}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            future.cancel()
            if not batcher.closing:
                raise
            # uvicorn cancels what is still running when --graceful_timeout has passed: say so, in JSON
            raise ServeError("shutting_down", "The server shut down before answering this request; retry.") from None
        finally:
            hung_up.cancel()
        if not future.done():
            future.cancel()
            metrics.error("disconnected")
            return None
        try:
            return future.result()
        except BatchFailedError as err:
            raise ServeError("backend", str(err)) from err

    # --- routes -----------------------------------------------------------------------------------------------------

    @app.post(
        "/predict",
        response_model=list[Prediction] | list[list[Prediction]],
        responses=ERROR_RESPONSES,
        summary="Classify texts, each with its adapter (text-embeddings-inference's /predict shape)",
    )
    async def predict(body: PredictRequest, request: Request):
        texts, single = check_inputs(body.inputs, settings)
        adapters = row_adapters(body.adapter, len(texts), names, classifier.bank is not None)
        top_k = check_top_k(body.top_k, classifier.mode)
        answers = await answer_rows(request, texts, adapters)
        if answers is None:
            return Response(status_code=KINDS["disconnected"])
        answers = ranked(answers, top_k)
        return JSONResponse(answers[0] if single else answers)

    @app.post(
        "/adapters/{name}",
        response_model=list[list[Prediction]],
        responses=ERROR_RESPONSES,
        summary="Classify with one adapter (the Hugging Face Inference API's text-classification shape)",
    )
    async def classify(name: str, body: InferenceRequest, request: Request):
        if name not in names:
            raise ServeError("unknown_adapter", f"No adapter {name!r} on this server; it has {', '.join(names)}.")
        texts, _ = check_inputs(body.inputs, settings)
        top_k = check_top_k(body.parameters.top_k if body.parameters is not None else None, classifier.mode)
        answers = await answer_rows(request, texts, [name] * len(texts))
        if answers is None:
            return Response(status_code=KINDS["disconnected"])
        return JSONResponse(ranked(answers, top_k))

    @app.get("/adapters", response_model=AdaptersResponse, summary="The adapters served, and the base model")
    async def list_adapters():
        return JSONResponse(description)

    @app.get("/adapters/{name}", response_model=AdapterInfo, responses={404: ERROR_RESPONSES[404]})
    async def show_adapter(name: str):
        for info in description["adapters"]:
            if info["name"] == name:
                return JSONResponse(info)
        raise ServeError("unknown_adapter", f"No adapter {name!r} on this server; it has {', '.join(names)}.")

    @app.get("/health", response_model=HealthResponse, responses={503: ERROR_RESPONSES[503]})
    async def health():
        if batcher.closing:
            raise ServeError("shutting_down", "The server is shutting down.")
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", summary="Prometheus metrics (text exposition format)")
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    _add_error_handlers(app, metrics)

    app.add_middleware(
        RequestGuard,
        metrics=metrics,
        routes=app.router.routes,
        api_key=settings.api_key,
        max_body_bytes=settings.max_request_bytes,
        body_timeout_s=settings.body_timeout_s,
    )
    return app


def _add_error_handlers(app: FastAPI, metrics: ServeMetrics) -> None:
    """Every error as JSON `{"error": message, "error_type": kind}` with its status, counted by kind."""

    def refuse(kind: str, message: str, status: int | None = None, headers: dict | None = None) -> JSONResponse:
        metrics.error(kind)
        return JSONResponse({"error": message, "error_type": kind}, status_code=status or KINDS[kind], headers=headers)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError):
        return refuse(err.kind, err.message, err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, err: RequestValidationError):
        kind, message = describe_validation_error(err.errors())
        return refuse(kind, message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "validation")
        if err.status_code == 404:
            message = f"No route {request.url.path}; see /docs."
        elif err.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs."
        else:
            message = str(err.detail)
        return refuse(kind, message, err.status_code, getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        logger.exception("Unexpected error on %s %s", request.method, request.url.path)
        return refuse("backend", f"Internal error ({type(err).__name__}); the server logged it.")


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def describe_validation_error(errors: list[dict]) -> tuple[str, str]:
    """(kind, one-line message) for FastAPI's validation errors of a request body."""
    # A value that fits no member of a union gives one error per member: the deepest one is the closest fit
    # (`["a", 3]` is meant as a list of strings: its error is at inputs[1]).
    first = max(errors, key=lambda error: len(error.get("loc", ())))
    kind, loc = first.get("type", ""), tuple(first.get("loc", ()))
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        position = loc[-1] if len(loc) > 1 and isinstance(loc[-1], int) else None
        where = f" at position {position}" if position is not None else ""
        return "malformed_json", f"The body is not valid JSON{where}: {detail or 'decode error'}."
    if loc == ("body",):
        if kind == "missing":
            return "validation", f"The body is empty: send a JSON object such as {BODY_EXAMPLE}."
        return "validation", f"The body must be a JSON object such as {BODY_EXAMPLE}."
    path, field = "", None
    for part in loc[1:]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in FIELD_HINTS or kind == "extra_forbidden":
            path += f".{part}" if path else part
            field = part
        # other strings are the members of a union (`str`, `list[str]`): not part of the path
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(field), list(FIELD_HINTS), n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        return "validation", f"Unknown field `{path}`.{hint} See /docs for the fields each route takes."
    if kind == "missing":
        return "validation", f"`{path}` is missing; send a JSON object such as {BODY_EXAMPLE}."
    indexed = path.endswith("]")
    hint = (ITEM_HINTS if indexed else FIELD_HINTS).get(field) or first.get("msg", "is not valid")
    return "validation", f"`{path}` {hint}."


def describe_adapters(classifier) -> dict:
    """What ``GET /adapters`` shows: the base model, the task, the mode, the label words and each adapter."""
    bank = classifier.bank
    model = classifier.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if bank is not None:
        adapters = [bank.adapter(name).describe() for name in bank.names]
        base_model = getattr(base, "name_or_path", None)
    else:  # one model served alone: a LoRA (or other peft) adapter, or a complete model
        peft_config = getattr(model, "peft_config", {}).get("default")
        kind = str(peft_config.peft_type.value).lower() if peft_config is not None else "full"
        base_model = getattr(base, "name_or_path", None) if peft_config is not None else None
        source = getattr(base, "name_or_path", None) if peft_config is None else None
        adapters = [
            {
                "name": classifier.adapter_names[0],
                "source": source,
                "revision": None,
                "kind": kind,
                "prefix_scope": None,
                "num_virtual_tokens": getattr(peft_config, "num_virtual_tokens", None),
                "label_words": classifier.labels,
                "task": classifier.task,
            }
        ]
    return {
        "base_model": base_model or None,
        "task": classifier.task,
        "mode": classifier.mode,
        "labels": classifier.labels,
        "adapters": adapters,
    }
