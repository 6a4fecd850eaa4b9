"""`/openapi.json` as the gateway behaves: request bodies with the constraints it enforces, every
status it answers with OpenAI's error body, bearer auth, and `/metrics` as Prometheus text.

The request schemas are the pydantic models the gateway validates with (schemas.py), so the two
cannot drift; the answers' schemas below describe answers.py's bodies for clients and fuzzers.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from ftprefix import __version__
from ftprefix.gateway.limits import header_names

REF = "#/components/schemas/{model}"
BEARER = "bearer"
SECURED: dict[str, Any] = {"security": [{BEARER: []}]}


def api_version() -> str:
    return __version__


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"]


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[Any]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    parent: str | None


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]


_DESCRIPTIONS = {
    400: (
        "The request is not one the gateway serves (bad JSON, a wrong type, an unknown field, text "
        "that is not Unicode, a value FT cannot honour)"
    ),
    401: "Missing or invalid API key",
    404: "The model does not exist, or this key may not use it",
    413: "The body is larger than the gateway takes",
    429: "A limit of this key was reached (Retry-After says when to try again)",
    500: "Internal error (the gateway's log has it under the response's x-request-id)",
    503: "The model server is not available, or no place at it came free in time (Retry-After)",
    504: "The model server did not answer in time",
}
_RATE_HEADERS = {name: {"schema": {"type": "string"}} for name in header_names()}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"description": _DESCRIPTIONS[status], "model": ErrorResponse}
        if status in (429, 503):
            retry = {"retry-after": {"schema": {"type": "string"}}}
            entry["headers"] = {**retry, **(_RATE_HEADERS if status == 429 else {})}
        out[status] = entry
    return out


ERRORS_V1 = _errors(401, 404, 500, 503, 504)
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Health, "description": "Triton answers with the model ready"},
    503: {"model": ErrorResponse, "description": "Triton or the model is not available"},
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text exposition",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    404: {"model": ErrorResponse, "description": "Metrics are off (--no-metrics)"},
}


# one server-sent event (the fields of the text/event-stream format)
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "description": "a chunk's JSON, an error's JSON, or [DONE] last"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


def _generation(answer: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "model": answer,
            "description": "The answer; with stream, server-sent events ending with `data: [DONE]`",
            "headers": _RATE_HEADERS,
            "content": {"text/event-stream": {"schema": SSE_EVENT}},
        },
        **_errors(400, 401, 404, 413, 429, 500, 503, 504),
    }


def completion_responses() -> dict[int | str, dict[str, Any]]:
    return _generation(CompletionResponse)


def chat_responses() -> dict[int | str, dict[str, Any]]:
    return _generation(ChatCompletionResponse)


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """An operation's requestBody from the model the gateway validates with (`$defs` moved to the
    document's components by `install`)."""
    schema = model.model_json_schema(ref_template=REF)
    return {
        **SECURED,
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
    }


def _strip_422(operation: dict[str, Any]) -> None:
    # FastAPI documents a 422 for operations with parameters; validation errors here are 400s
    operation.get("responses", {}).pop("422", None)


def install(app: FastAPI, base_model: str) -> None:
    """Generate the document once, then amend what FastAPI cannot infer from the routes (the base
    model, always served, is the example model name)."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = doc.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        for item in doc.get("paths", {}).values():
            for operation in item.values():
                _strip_422(operation)
                body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
                schema = body.get("schema", {})
                schemas.update(schema.pop("$defs", {}))
                if "model" in schema.get("properties", {}):
                    schema["properties"]["model"]["examples"] = [base_model]
        components["securitySchemes"] = {BEARER: {"type": "http", "scheme": "bearer"}}
        app.openapi_schema = doc
        return doc

    app.openapi = document  # type: ignore[method-assign]
