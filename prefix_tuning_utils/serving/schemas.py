"""The bodies the routes take and give, as pydantic models: FastAPI validates requests with them and documents them
at ``/docs``.

* ``POST /predict`` takes text-embeddings-inference's classification body (``inputs``: a string or a list of strings)
  with this server's ``adapter`` (a name, or one per input) and ``top_k``; it answers ``[{"label", "score"}, ...]``
  for a string, a list of such lists for a list, every label best first (TEI's answer) unless ``top_k`` is given.
* ``POST /adapters/{name}`` takes the Hugging Face Inference API's text-classification body
  (``{"inputs": ..., "parameters": {"top_k": ..., "function_to_apply": ...}}``) and answers as that API does: a list
  of label lists, one per input (a string is one input), which is what ``InferenceClient.text_classification``
  parses.

Unknown fields are refused (422): a misspelt ``adapters`` must not silently fall back to the default adapter.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


__all__ = [
    "AdapterInfo",
    "AdaptersResponse",
    "ErrorResponse",
    "HealthResponse",
    "InferenceParameters",
    "InferenceRequest",
    "Prediction",
    "PredictRequest",
]

PositiveInt = Annotated[int, Field(ge=1, strict=True)]
Inputs = Annotated[
    str | list[str],
    Field(description="A text, or a list of texts (answered in order).", examples=["Operating profit rose 12 % ."]),
]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: Inputs
    adapter: str | list[str | None] | None = Field(
        default=None,
        description="The adapter that answers every input, or a list with one adapter per input (null in the list: "
        "the base model without any adapter). May be left out when the server holds one adapter.",
        examples=["acme"],
    )
    top_k: PositiveInt | None = Field(
        default=None, description="Only the best k labels of each input (default: every label, best first)."
    )


class InferenceParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_k: PositiveInt | None = Field(default=None, description="Only the best k labels (default: every label).")
    function_to_apply: Literal["softmax"] | None = Field(
        default=None,
        description="Scores are the softmax of the label words' log-probabilities over the label set; `softmax` is "
        "the only function this server applies.",
    )


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: Inputs
    parameters: InferenceParameters | None = None


class Prediction(BaseModel):
    label: str | None = Field(description="A label word (generate mode: null when the model wrote no label word).")
    score: float | None = Field(
        description="Score mode: the label's probability over the label set. Generate mode: the probability of "
        "writing exactly this label word."
    )
    answer: str | None = Field(default=None, description="Generate mode only: the text the model wrote.")


class AdapterInfo(BaseModel):
    name: str
    source: str | None = Field(description="The folder or Hub id it was loaded from.")
    revision: str | None = None
    kind: str = Field(description="prefix, prompt, lora, full (a fully fine-tuned model) or another peft type.")
    prefix_scope: str | None = None
    num_virtual_tokens: int | None = None
    label_words: list[str]
    task: str


class AdaptersResponse(BaseModel):
    base_model: str | None
    task: str
    mode: str
    labels: list[str]
    adapters: list[AdapterInfo]


class HealthResponse(BaseModel):
    status: str


class ErrorResponse(BaseModel):
    error: str = Field(description="What is wrong with the request, and what to change.")
    error_type: str = Field(description="The kind of error (errors.KINDS), e.g. validation, too_large.")
