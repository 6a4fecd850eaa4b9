"""The OpenAI-compatible HTTP API in front of Triton: the task is the model name.

Like vLLM serving LoRA adapters as model names, every prefix-tuned task of the server's task table
is a model (`model="smileface"`) and the base model is one more, under its own name. Requests go
to Triton through `ftprefix.client.AsyncClient`, concurrently, so Triton's dynamic batcher merges
them. The task table is re-read as the client's table ages, so tasks added on the server appear.

The gateway is the tenant boundary: with API keys configured every `/v1/*` call needs one, and a
key scoped to some tasks sees and uses only those (any other model is a 404, as if it did not
exist). `/health` and `/metrics` stay open for probes and scrapers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ftprefix.client import (
    AsyncClient,
    Completion,
    FtprefixClientError,
    InvalidRequestError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerUnavailableError,
    UnknownTaskError,
)
from ftprefix.gateway import schemas
from ftprefix.gateway.auth import KeyRing, Scope
from ftprefix.gateway.chat import ChatTemplate, ChatTemplateError, load_chat_template
from ftprefix.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from ftprefix.gateway.schemas import ApiError, ChatRequest, CompletionRequest
from ftprefix.task_table import unknown_name_hint
from ftprefix.text import Tokenizer, load_tokenizer

OWNER = "ftprefix"
UNKNOWN_MODEL = ""  # the metrics label of requests for models that do not exist


@dataclass(frozen=True)
class GatewaySettings:
    """What `ftprefix openai` and `ftprefix serve --openai-port` configure."""

    triton_url: str
    tokenizer_dir: Path
    base_model: str  # the model name of the base model (no task)
    newline_token: str | None = None
    api_keys: tuple[str, ...] = ()  # keys for every model
    api_keys_file: Path | None = None  # {"KEY": ["task", ...] | "*"}, read again when it changes
    chat_template: Path | None = None  # instead of the tokenizer's own
    metrics: bool = True  # per-task counters at /metrics
    timeout: float = 120.0


def api_error(exc: FtprefixClientError) -> ApiError:
    """A client error as the HTTP status and body an OpenAI client understands."""
    if isinstance(exc, UnknownTaskError):
        # a task removed meanwhile: say only that it does not exist (no other tenant's names)
        return ApiError(404, f"the model {exc.task!r} does not exist", param="model", code="model_not_found")
    if isinstance(exc, InvalidRequestError):
        return ApiError(400, str(exc), code="invalid_request")
    if isinstance(exc, (ServerUnavailableError, ModelNotReadyError)):
        return ApiError(503, str(exc), code="triton_unavailable", kind="service_unavailable")
    if isinstance(exc, RequestTimeoutError):
        return ApiError(504, str(exc), code="triton_timeout", kind="timeout")
    return ApiError(500, str(exc), code="triton_error")


class KeyCheck:
    """ASGI middleware: every /v1/* request needs a valid key, checked before its body is read."""

    def __init__(self, app: Callable[..., Awaitable[None]], keys: KeyRing, metrics: GatewayMetrics) -> None:
        self.app, self.keys, self.metrics = app, keys, metrics

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
        allowed = self.keys.scope_of(header)
        if allowed is None:
            self.metrics.record(UNKNOWN_MODEL, 401, 0.0)
            error = ApiError(
                401,
                "missing or invalid API key: send the header Authorization: Bearer KEY",
                code="invalid_api_key",
            )
            await JSONResponse(error.body(), status_code=401)(scope, receive, send)
            return
        scope.setdefault("state", {})["ftprefix_scope"] = allowed
        await self.app(scope, receive, send)


def create_app(settings: GatewaySettings, *, tokenizer: Tokenizer | None = None) -> FastAPI:
    """The FastAPI app; `tokenizer` (else read from settings.tokenizer_dir) also renders chats."""
    tokenizer = tokenizer or load_tokenizer(settings.tokenizer_dir, newline_token=settings.newline_token)
    template = load_chat_template(tokenizer, settings.chat_template)
    keys = KeyRing(settings.api_keys, settings.api_keys_file)
    metrics = GatewayMetrics(enabled=settings.metrics)
    base_model = settings.base_model
    holder: dict[str, AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        holder["client"] = AsyncClient(
            settings.triton_url, tokenizer=tokenizer, timeout=settings.timeout, connect_retries=0
        )
        try:
            yield
        finally:
            await holder["client"].close()

    app = FastAPI(title="ftprefix OpenAI-compatible API", lifespan=lifespan)
    app.add_middleware(KeyCheck, keys=keys, metrics=metrics)
    app.state.keys = keys  # for the commands' start-up line

    def client() -> AsyncClient:
        return holder["client"]

    # -- every error in OpenAI's error body ------------------------------------------------------

    @app.exception_handler(ApiError)
    async def on_api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            loc = []
        message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid request')}"
        metrics.record(UNKNOWN_MODEL, 400, 0.0)
        return JSONResponse(ApiError(400, message, param=loc[0] if loc else None).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # unparseable bodies, unknown routes, wrong methods
        error = ApiError(exc.status_code, str(exc.detail), code=None)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def on_bug(_request: Request, exc: Exception) -> JSONResponse:
        error = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")
        return JSONResponse(error.body(), status_code=500)

    # -- models ----------------------------------------------------------------------------------

    async def visible_models(allowed: Scope, refresh: bool = False) -> list[str]:
        try:
            info = await client().model_info(refresh=refresh)
        except FtprefixClientError as exc:
            raise api_error(exc) from exc
        names = [base_model, *(t.name for t in info.tasks.live if t.name != base_model)]
        return [n for n in names if allowed.allows(n)]

    async def task_of(model: str, allowed: Scope) -> str | None:
        """The task a model name means (None: the base model), or ApiError(404) for a model that
        does not exist or that this key may not use: the two answers are the same."""
        if allowed.allows(model):
            if model == base_model:
                return None
            try:
                info = await client().model_info()
                if info.tasks.find(model) is None:
                    info = await client().model_info(refresh=True)  # a task added since the last read
            except FtprefixClientError as exc:
                raise api_error(exc) from exc
            if info.tasks.find(model) is not None:
                return model
        hint = unknown_name_hint(model, await visible_models(allowed), what="model")
        raise ApiError(
            404, f"the model {model!r} does not exist; {hint}", param="model", code="model_not_found"
        )

    def model_card(name: str, created: int) -> dict[str, Any]:
        parent = None if name == base_model else base_model
        return {"id": name, "object": "model", "created": created, "owned_by": OWNER, "parent": parent}

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 once Triton answers with the model ready (for readiness probes), 503 otherwise."""
        try:
            await client().model_info(refresh=True)
        except FtprefixClientError as exc:
            return JSONResponse(api_error(exc).body(), status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        if not metrics.enabled:
            raise ApiError(404, "metrics are off (--no-metrics)", code="not_found")
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        names = await visible_models(request.state.ftprefix_scope, refresh=True)  # the table as it is now
        created = schemas.now()
        return JSONResponse({"object": "list", "data": [model_card(n, created) for n in names]})

    @app.get("/v1/models/{model}")
    async def model(request: Request, model: str) -> JSONResponse:
        await task_of(model, request.state.ftprefix_scope)
        return JSONResponse(model_card(model, schemas.now()))

    # -- generation --------------------------------------------------------------------------------

    async def generate(
        request: Request, body: CompletionRequest | ChatRequest, prompts: list[Any], options: dict[str, Any]
    ) -> Response:
        """Shared by /v1/completions and /v1/chat/completions: run the prompts, answer in `body`'s shape."""
        started = time.perf_counter()
        label = UNKNOWN_MODEL
        try:
            task = await task_of(body.model, request.state.ftprefix_scope)
            label = body.model
            answer = schemas.answer_format(body)
            if body.stream:
                events = _stream(client(), answer, prompts, task, options, body.include_usage)

                async def counted() -> AsyncIterator[str]:
                    status, used = 200, (0, 0)
                    try:
                        async for event in events:
                            if isinstance(event, tuple):
                                status, used = event
                            else:
                                yield event
                    finally:
                        metrics.record(label, status, time.perf_counter() - started, *used)

                return EventSourceResponse(counted(), ping=15)
            try:
                done = await client().generate_batch(prompts, tasks=task, **options)
            except FtprefixClientError as exc:
                raise api_error(exc) from exc
            used = (sum(c.prompt_token_count or 0 for c in done), sum(len(c.token_ids) for c in done))
            metrics.record(label, 200, time.perf_counter() - started, *used)
            # plain JSON types already: skip FastAPI's jsonable_encoder pass over the body
            return JSONResponse(answer.full(done, schemas.usage(*used)))
        except ApiError as exc:
            metrics.record(label, exc.status, time.perf_counter() - started)
            raise

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request, body: CompletionRequest) -> Response:
        return await generate(request, body, body.prompts(), body.generate_options())

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request, body: ChatRequest) -> Response:
        options = body.generate_options()
        prompt = render_chat(template, body)
        return await generate(request, body, [prompt], options)

    return app


def render_chat(template: ChatTemplate | None, body: ChatRequest) -> str:
    if template is None:
        raise ApiError(
            400,
            "this model has no chat template (tokenizer_config.json has no chat_template): start the "
            "gateway with --chat-template FILE, a Jinja template as transformers' apply_chat_template "
            "reads (`ftprefix assets chat-templates` has rinna's instruction format), or use /v1/completions",
            param="messages",
            code="no_chat_template",
        )
    try:
        return template.render(body.message_dicts())
    except ChatTemplateError as exc:
        raise ApiError(400, str(exc), param="messages", code="invalid_messages") from None


async def _stream(
    client: AsyncClient,
    answer: schemas.AnswerFormat,
    prompts: list[Any],
    task: str | None,
    options: dict[str, Any],
    include_usage: bool,
) -> AsyncIterator[str | tuple[int, tuple[int, int]]]:
    """SSE data in OpenAI's format: the pieces of text of every prompt as they come, then `[DONE]`;
    last, (status, (prompt tokens, generated tokens)) for the metrics."""
    prompt_tokens = completion_tokens = 0
    status = 200
    try:
        for index in range(len(prompts)):
            opening = answer.opening(index)
            if opening is not None:
                yield json.dumps(opening)
        info = await client.model_info()
        if not info.decoupled:  # the server answers once per request: one chunk per prompt
            done: list[Completion] = await client.generate_batch(prompts, tasks=task, **options)
            for i, c in enumerate(done):
                prompt_tokens += c.prompt_token_count or 0
                completion_tokens += len(c.token_ids)
                yield json.dumps(answer.chunk(i, c.text or "", schemas.finish_reason(c.finish_reason)))
        else:
            queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

            async def pump(index: int, prompt: Any) -> None:
                try:
                    async for piece in client.stream(prompt, task=task, **options):
                        await queue.put((index, piece))
                except BaseException as exc:  # handed to the consumer, which re-raises it
                    await queue.put((index, exc))
                finally:
                    await queue.put((index, None))

            prompt_counts: dict[int, int] = {}
            pumps = [asyncio.create_task(pump(i, p)) for i, p in enumerate(prompts)]
            try:
                running = len(pumps)
                while running:
                    index, item = await queue.get()
                    if item is None:
                        running -= 1
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        prompt_counts[index] = item.prompt_token_count or 0
                        completion_tokens += len(item.token_ids)
                        reason = schemas.finish_reason(item.finish_reason) if item.finish_reason else None
                        if item.text or reason:
                            yield json.dumps(answer.chunk(index, item.text or "", reason))
            finally:
                for p in pumps:
                    p.cancel()
            prompt_tokens = sum(prompt_counts.values())
        if include_usage:
            yield json.dumps(answer.usage_chunk(schemas.usage(prompt_tokens, completion_tokens)))
    except FtprefixClientError as exc:
        error = api_error(exc)
        status = error.status
        yield json.dumps(error.body())  # the stream has started: the error goes in it
    yield "[DONE]"
    yield (status, (prompt_tokens, completion_tokens))
