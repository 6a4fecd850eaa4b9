"""The OpenAI-compatible HTTP API in front of Triton: the task is the model name.

Like vLLM serving LoRA adapters as model names, every prefix-tuned task of the server's task table
is a model (`model="smileface"`) and the base model is one more, under its own name. Requests go
to Triton through `ftprefix.client.AsyncClient`, concurrently, so Triton's dynamic batcher merges
them. The task table is re-read as the client's table ages, so tasks added on the server appear.

The gateway is the tenant boundary: with API keys configured every `/v1/*` call needs one, a key
scoped to some tasks sees and uses only those (any other model is a 404, as if it did not exist),
and a key's limits (concurrency, requests and tokens per minute, max_tokens) hold. Requests take a
place at Triton through fair admission (`admission.py`). `/health` and `/metrics` stay open for
probes and scrapers.

A completion request, in order: its key (`GatewayApp`, before the body is read), the body (at most
`max_body_bytes`, strictly validated), the model, the sampling options, the prompt's tokens (and
the context length), the key's limits, a place at Triton, then the answer, whole or streamed.
Everything that can be refused is refused before anything reaches Triton.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from ftprefix.client import AsyncClient, Completion, FtprefixClientError
from ftprefix.gateway import access, openapi
from ftprefix.gateway.admission import Admission, ClientGone, QueueTimeout
from ftprefix.gateway.answers import DONE, AnswerFormat, ChatAnswerFormat, finish_reason, usage
from ftprefix.gateway.auth import KeyPolicy, KeyRing
from ftprefix.gateway.chat import ChatTemplate, ChatTemplateError, load_chat_template
from ftprefix.gateway.deadline import client_timeout, within
from ftprefix.gateway.errors import (
    REQUEST_ID_HEADER,
    RETRY_AFTER_S,
    ApiError,
    ReadinessLog,
    bad_param,
    cannot_serve,
    from_client_error,
    internal_error,
    request_id,
    shutting_down,
)
from ftprefix.gateway.events import EventStream
from ftprefix.gateway.limits import Grant, Limits, header_names
from ftprefix.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from ftprefix.gateway.prompt_ids import PromptIds, TooLong
from ftprefix.gateway.schemas import ChatRequest, CompletionRequest, parse_request
from ftprefix.task_table import unknown_name_hint
from ftprefix.text import Tokenizer, load_tokenizer

OWNER = "ftprefix"
UNKNOWN = ""  # the metrics label of a model that does not exist, or of a request without a key
DEFAULT_MAX_TOKENS = 16  # as OpenAI's completions
LONGEST_NAME = 256  # task names are shorter (layout.MAX_TASK_NAME); longer model names match none
CLIENT_GONE = 499  # what the metrics count a request whose client left before its answer under
log = logging.getLogger("ftprefix.gateway")


@dataclass(frozen=True)
class GatewaySettings:
    """What `ftprefix openai` and `ftprefix serve --openai-port` configure."""

    triton_url: str
    tokenizer_dir: Path
    base_model: str  # the model name of the base model (no task)
    triton_http_url: str | None = None  # generations over Triton's HTTP endpoint (AsyncClient http_url)
    newline_token: str | None = None
    api_keys: tuple[str, ...] = ()  # keys for every model
    api_keys_file: Path | None = None  # see auth.py, read again when it changes
    chat_template: Path | None = None  # instead of the tokenizer's own
    metrics: bool = True  # per-task and per-tenant counters at /metrics
    access_log: bool = False  # a line per /v1 request in the log (access.py)
    timeout: float = 120.0  # one generation at Triton
    max_in_flight: int | None = None  # prompt rows at Triton; None: the model's max_batch_size x instances
    fair: bool = True  # waiting requests admitted round-robin by tenant; False: first come, first served
    queue_timeout: float = 60.0  # how long a request may wait for a place at Triton
    max_model_len: int = 2048  # prompt + completion tokens of one row
    max_body_bytes: int = 4 * 1024 * 1024
    # origins whose web pages may call the API from a browser (CORS; "*": any); none by default
    cors_origins: tuple[str, ...] = ()
    metrics_dir: str | None = None  # with --workers: where every worker's metrics meet (workers.py)
    workers: int = 1  # gateway processes serving one port (--workers), which split max_in_flight
    worker: int = 0  # which of them this one is
    # on SIGTERM or Ctrl-C: how long requests in flight may finish; then a stream ends with an error
    # event and [DONE], an answer not yet sent is a 503 (within Kubernetes' default 30 s grace period)
    stop_timeout: float = 25.0

    def share(self, places: int) -> int:
        """This worker's part of `places` at Triton: what keeps the whole gateway within them,
        however many workers serve (each has at least one place, or it could serve nothing)."""
        return max(1, places // self.workers + (self.worker < places % self.workers))


class _Context:
    """What one request carries through the gateway (in its ASGI scope's state)."""

    __slots__ = ("id_header", "model", "policy", "request_id", "started")

    def __init__(self, request: str) -> None:
        self.request_id = request
        self.id_header = (REQUEST_ID_HEADER.encode(), request.encode())  # on every response
        self.policy: KeyPolicy | None = None
        self.started = time.perf_counter()
        self.model = UNKNOWN


ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


class GatewayApp(FastAPI):
    """FastAPI with the gateway's front door ahead of its middleware stack: a request id on every
    response, and the key of every /v1/* call checked before its body is read. The generating
    routes (`generating`, by path, POST) are answered here directly: they pay for no routing,
    dependency solving or middleware (about 30 us per request, 4% of the gateway's CPU), and a
    streamed answer's events go straight to the server, not through a wrapper per event."""

    keys: KeyRing
    generating: dict[str, ASGIApp]
    # a /v1 request's end: its metrics and access-log line (model and tenant from the context)
    finished: Callable[..., None]
    # with --cors-origin: the front door behind CORS, which answers browsers' preflight requests
    # itself (they carry no key) and adds its headers to every answer, errors and streams included
    cors: ASGIApp | None = None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if self.cors is not None:
            await self.cors(scope, receive, send)
        else:
            await self.front_door(scope, receive, send)

    async def front_door(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        ctx = _Context(request_id(scope["headers"]))
        scope.setdefault("state", {})["ftprefix"] = ctx
        if scope["path"].startswith("/v1/"):
            authorization = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            ctx.policy = self.keys.policy_of(authorization.decode("latin-1"))
            if ctx.policy is None:
                self.finished(ctx, 401)
                error = ApiError(
                    401,
                    "missing or invalid API key: send the header Authorization: Bearer KEY",
                    code="invalid_api_key",
                )
                response = JSONResponse(error.body(), status_code=401)
                response.raw_headers.append(ctx.id_header)
                await response(scope, receive, send)
                return
            route = self.generating.get(scope["path"])
            if route is not None and scope["method"] == "POST":
                scope["app"] = self
                await route(scope, receive, send)
                return

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), ctx.id_header]
            await send(message)

        await super().__call__(scope, receive, send_with_id)


def _context(request: Request) -> _Context:
    return request.scope["state"]["ftprefix"]


def create_app(settings: GatewaySettings, *, tokenizer: Tokenizer | None = None) -> FastAPI:
    """The FastAPI app; `tokenizer` (else read from settings.tokenizer_dir) also renders chats."""
    tokenizer = tokenizer or load_tokenizer(settings.tokenizer_dir, newline_token=settings.newline_token)
    template = load_chat_template(tokenizer, settings.chat_template)
    prompt_ids = PromptIds(tokenizer, settings.max_model_len)
    keys = KeyRing(settings.api_keys, settings.api_keys_file)
    metrics = GatewayMetrics(enabled=settings.metrics, shared_dir=settings.metrics_dir)
    limits = Limits()
    places = settings.max_in_flight
    admission = Admission(None if places is None else settings.share(places), fair=settings.fair)
    if settings.metrics_dir is not None and settings.metrics:  # other workers read these gauges
        admission.changed = lambda: metrics.places(admission.in_flight, admission.waiting)
    base_model = settings.base_model
    readiness = ReadinessLog()
    holder: dict[str, AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        holder["client"] = AsyncClient(
            settings.triton_url,
            http_url=settings.triton_http_url,
            tokenizer=tokenizer,
            timeout=client_timeout(settings.timeout),  # the gateway keeps the request's own
            connect_retries=0,
        )
        try:
            yield
        finally:
            prompt_ids.close()
            await holder["client"].close()

    app = GatewayApp(title="ftprefix OpenAI-compatible API", version=openapi.api_version(), lifespan=lifespan)
    app.keys, app.generating = keys, {}  # generating: filled below

    def finished(
        ctx: _Context, status: int, prompt: int = 0, completion: int = 0, reason: str | None = None
    ) -> None:
        """A /v1 request's end: counted in the metrics and, with --access-log, written to the log."""
        tenant = ctx.policy.tenant if ctx.policy is not None else UNKNOWN
        seconds = time.perf_counter() - ctx.started
        metrics.record(ctx.model, tenant, status, seconds, prompt, completion, reason=reason)
        if settings.access_log:
            access.write(ctx.request_id, tenant, ctx.model, status, seconds, prompt, completion, reason)

    app.finished = finished
    if settings.cors_origins:
        app.cors = CORSMiddleware(
            app.front_door,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],  # openai-node adds headers of its own (x-stainless-*)
            expose_headers=[REQUEST_ID_HEADER, "retry-after", *header_names()],
            max_age=600,
        )
    app.state.admission = admission
    app.state.keys = keys  # for the commands' start-up lines

    def describe_limits() -> str:
        places = settings.max_in_flight or "the model's max_batch_size x instances"
        if settings.workers > 1:
            places = f"{places} in all, split among the {settings.workers} workers (at least 1 each)"
        chat = (
            f"chat template from {template.origin}"
            if template is not None
            else "no chat template, so /v1/chat/completions answers 400 (give --chat-template FILE)"
        )
        return (
            f"prompt rows at Triton: at most {places}, the other requests admitted "
            f"{'round-robin by tenant' if settings.fair else 'first come, first served'} (queue "
            f"timeout {settings.queue_timeout:g} s); context {settings.max_model_len} tokens; {chat}"
        )

    app.state.describe_limits = describe_limits

    def client() -> AsyncClient:
        return holder["client"]

    # -- every error in OpenAI's error body --------------------------------------------------

    def error_response(request: Request, error: ApiError) -> JSONResponse:
        ctx = _context(request)
        if ctx.policy is not None:  # a /v1 call with a valid key: counted per model and tenant
            finished(ctx, error.status, reason=error.reason)
        return JSONResponse(error.body(), status_code=error.status, headers=dict(error.headers))

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # unknown routes, wrong methods
        error = ApiError(exc.status_code, str(exc.detail), code=None)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        return error_response(request, internal_error(exc, _context(request).request_id))

    # -- models ----------------------------------------------------------------------------------

    vocab_checked: list[int | None] = [None]  # the model vocabulary the tokenizer was checked against

    def tokenizer_fits() -> bool:
        return vocab_checked[0] is None or tokenizer.vocab_size <= vocab_checked[0]

    def check_tokenizer(info, request_id: str) -> None:
        """Another model's tokenizer (ids past the model's embeddings; serve and triton-repo refuse
        it at start) answers nothing: prompts with those ids would be refused and the others
        answered from ids the model was not trained with. Every request and /health are a 503
        while it lasts, so that a rollout with the wrong tokenizer never gets ready and the
        replicas before it go on serving; the log says why, once per vocabulary Triton reports."""
        if info.vocab_size is not None and info.vocab_size != vocab_checked[0]:
            fitted, vocab_checked[0] = tokenizer_fits(), info.vocab_size
            if not tokenizer_fits():
                log.error(
                    "the tokenizer %s gives token ids up to %d, and the model at %s has embeddings for "
                    "ids 0 to %d only: it is another model's tokenizer, and every request is a 503 "
                    "until the gateway runs with the model's own --tokenizer",
                    tokenizer.path.parent,
                    tokenizer.vocab_size - 1,
                    settings.triton_url,
                    info.vocab_size - 1,
                )
            elif not fitted:
                log.info("the tokenizer fits the model at %s now", settings.triton_url)
        if not tokenizer_fits():
            raise cannot_serve(request_id)

    async def model_info(request_ctx: _Context, refresh: bool = False):
        try:
            info = await client().model_info(refresh=refresh)
        except FtprefixClientError as exc:
            raise from_client_error(exc, request_ctx.request_id) from exc
        check_tokenizer(info, request_ctx.request_id)
        return info

    async def visible_models(ctx: _Context, policy: KeyPolicy, refresh: bool = False) -> list[str]:
        info = await model_info(ctx, refresh)
        names = [base_model, *(t.name for t in info.tasks.live if t.name != base_model)]
        return [n for n in names if policy.allows(n)]

    async def task_of(ctx: _Context, model: str, policy: KeyPolicy) -> str | None:
        """The task a model name means (None: the base model), or ApiError(404) for a model that
        does not exist or that this key may not use: the two answers are the same."""
        if policy.allows(model):
            if model == base_model:
                return None
            info = await model_info(ctx)
            if info.tasks.find(model) is None:
                info = await model_info(ctx, refresh=True)  # a task added since the last read
            if info.tasks.find(model) is not None:
                return model
        if len(model) > LONGEST_NAME:  # no task has such a name: no hints, and not all of it echoed
            shown = f"{model[:LONGEST_NAME]!r}... ({len(model)} characters)"
            raise ApiError(404, f"the model {shown} does not exist", param="model", code="model_not_found")
        hint = unknown_name_hint(model, await visible_models(ctx, policy), what="model")
        message = f"the model {model!r} does not exist; {hint}"
        raise ApiError(404, message, param="model", code="model_not_found")

    def model_card(name: str, created: int) -> dict[str, Any]:
        parent = None if name == base_model else base_model
        return {"id": name, "object": "model", "created": created, "owned_by": OWNER, "parent": parent}

    @app.get("/health", responses=openapi.HEALTH_RESPONSES)
    async def health(request: Request) -> JSONResponse:
        """200 once Triton answers with the model ready (for readiness probes), 503 otherwise."""
        rid = _context(request).request_id
        try:
            info = await client().model_info(refresh=True)
        except FtprefixClientError as exc:
            readiness.failed(exc)
            error = from_client_error(exc, rid, logged=False)
            return JSONResponse(error.body(), status_code=503, headers={"retry-after": str(RETRY_AFTER_S)})
        readiness.ready()
        check_tokenizer(info, rid)  # another model's tokenizer: a 503, answered by on_api_error
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=Response, responses=openapi.METRICS_RESPONSES)
    async def prometheus() -> Response:
        """Prometheus text: per model and per tenant."""
        if not metrics.enabled:
            raise ApiError(404, "metrics are off (--no-metrics)", code="not_found")
        return Response(metrics.exposition(admission.in_flight, admission.waiting), media_type=CONTENT_TYPE)

    @app.get("/v1/models", responses=openapi.ERRORS_V1, openapi_extra=openapi.SECURED)
    async def models(request: Request) -> JSONResponse:
        """The base model and every task this key may use."""
        ctx = _context(request)
        assert ctx.policy is not None
        names = await visible_models(ctx, ctx.policy, refresh=True)  # the table as it is now
        created = int(time.time())
        return JSONResponse({"object": "list", "data": [model_card(n, created) for n in names]})

    @app.get("/v1/models/{model}", responses=openapi.ERRORS_V1, openapi_extra=openapi.SECURED)
    async def model(request: Request, model: str) -> JSONResponse:
        ctx = _context(request)
        assert ctx.policy is not None
        await task_of(ctx, model, ctx.policy)
        return JSONResponse(model_card(model, int(time.time())))

    # -- generation ------------------------------------------------------------------------------

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise _too_large(settings.max_body_bytes)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise _too_large(settings.max_body_bytes)
            chunks.append(chunk)
        return b"".join(chunks)

    async def place_limit(ctx: _Context) -> None:
        if admission.limit is None:  # what fills the model's batches, read once from Triton
            info = await model_info(ctx)
            admission.limit = settings.share(max(1, info.max_batch_size) * max(1, info.instances))

    async def tokens_of(prompts: list[str | list[int]], max_new: int, param: str) -> list[list[int]]:
        texts = iter(await prompt_ids.of([p for p in prompts if isinstance(p, str)]))
        ids = []
        for prompt in prompts:
            row = next(texts) if isinstance(prompt, str) else prompt
            if isinstance(row, TooLong):
                raise bad_param(
                    param,
                    f"this model's maximum context length is {settings.max_model_len} tokens; the "
                    f"prompt's first {row.head_chars} characters alone are {row.head_tokens} tokens: send a "
                    "shorter prompt",
                    code="context_length_exceeded",
                )
            ids.append(row)
        for row in ids:
            if not row:
                raise bad_param(param, "the prompt encodes to no tokens; FT needs at least one")
            if len(row) + max_new > settings.max_model_len:
                raise bad_param(
                    param,
                    f"this model's maximum context length is {settings.max_model_len} tokens; this "
                    f"request asks for {len(row) + max_new} ({len(row)} in the prompt, {max_new} for the "
                    "completion): send a shorter prompt or ask for fewer tokens",
                    code="context_length_exceeded",
                )
        return ids

    async def in_vocabulary(ctx: _Context, prompts: list[list[int]], stop_token_ids: list[int]) -> None:
        """Token ids the caller sent, checked against the model's vocabulary. The client checks
        them too, but only when it sends: after a stream's 200, where a 400 can no longer be given."""
        vocab = (await model_info(ctx)).vocab_size
        if vocab is None:
            return
        for param, rows in (("prompt", prompts), ("stop_token_ids", [stop_token_ids])):
            highest = max((max(row) for row in rows if row), default=-1)
            if highest >= vocab:
                raise bad_param(param, f"token id {highest} is not in the vocabulary (0 to {vocab - 1})")

    async def generate(request: Request, kind: type[CompletionRequest] | type[ChatRequest]) -> Response:
        """/v1/completions and /v1/chat/completions: validate, admit, answer in the request's shape."""
        ctx = _context(request)
        policy = ctx.policy
        assert policy is not None
        try:
            raw = await read_body(request)
        except ClientDisconnect:  # the client left before its whole body came: no answer, no bug
            finished(ctx, CLIENT_GONE)
            return Response(status_code=CLIENT_GONE)
        body = parse_request(raw, kind)
        task = await task_of(ctx, body.model, policy)
        if vocab_checked[0] is None or not tokenizer_fits():  # free once the tokenizer is known to fit
            await model_info(ctx)
        ctx.model = body.model
        default_max = min(DEFAULT_MAX_TOKENS, policy.max_tokens or DEFAULT_MAX_TOKENS)
        options = body.generate_options(default_max)
        max_new = options["max_new_tokens"]
        param = body.max_tokens_param if isinstance(body, ChatRequest) else "max_tokens"
        if policy.max_tokens is not None and max_new > policy.max_tokens:
            raise bad_param(param, f"{param} is {max_new}, above this key's cap of {policy.max_tokens}")
        if isinstance(body, ChatRequest):
            prompts: list[str | list[int]] = [render_chat(template, body)]
            answer: AnswerFormat = ChatAnswerFormat(body.model)
        else:
            prompts = body.prompts()
            answer = AnswerFormat(body.model)
        ids = await tokens_of(prompts, max_new, "messages" if isinstance(body, ChatRequest) else "prompt")
        sent_ids = [p for p in prompts if not isinstance(p, str)]
        if sent_ids or body.stop_token_ids:
            await in_vocabulary(ctx, sent_ids, body.stop_token_ids or [])
        prompt_tokens = sum(len(row) for row in ids)  # once per prompt, however many choices, as OpenAI
        # choice j of prompt i is choices[i * n + j]. Sampled, each choice is a row of its own; greedy
        # (no temperature in the options), a prompt's choices are one answer, so the prompt goes to
        # Triton once and its answer is each of its choices (`copies`): n rows of one prompt
        # would take n places and n rows of every batch to compute the same tokens
        copies = body.choices if "temperature" not in options else 1
        if body.choices > 1 and copies == 1:
            ids = [row for row in ids for _ in range(body.choices)]
        grant = limits.admit(policy, prompt_tokens + max_new * len(ids) * copies)
        try:
            await place_limit(ctx)
            # a place per prompt row: a batch in one request counts as that many requests
            waited = await admission.enter(
                policy.tenant, settings.queue_timeout, request.receive, places=len(ids), weight=policy.weight
            )
        except QueueTimeout:
            grant.finish(0)
            raise ApiError(
                503,
                f"the server is busy: no place at the model server within {settings.queue_timeout:g} s",
                code="server_busy",
                kind="service_unavailable",
                headers=[("retry-after", str(RETRY_AFTER_S))],
            ) from None
        except ClientGone:
            grant.finish(0)
            finished(ctx, CLIENT_GONE)
            return Response(status_code=CLIENT_GONE)
        except BaseException:
            grant.finish(0)
            raise
        metrics.waited(policy.tenant, waited)
        if body.stream:
            usage_in = UsageIn(body.include_usage, body.continuous_usage)
            return stream_answer(
                ctx, policy, answer, ids, copies, prompt_tokens, task, options, usage_in, grant
            )

        def ended(done: list[Completion] | None) -> None:  # Triton's generation, not the request
            admission.leave(len(ids))
            grant.finish(0 if done is None else prompt_tokens + sum(len(c.token_ids) for c in done) * copies)

        try:
            call = client().generate_batch(ids, tasks=task, **options)
            done = await within(call, settings.timeout, ended, ctx.request_id)
        except FtprefixClientError as exc:
            raise from_client_error(exc, ctx.request_id) from exc
        if copies > 1:
            done = [c for c in done for _ in range(copies)]
        completion_tokens = sum(len(c.token_ids) for c in done)
        finished(ctx, 200, prompt_tokens, completion_tokens)
        content = answer.full(done, usage(prompt_tokens, completion_tokens))
        return Response(content, media_type="application/json", headers=dict(grant.headers))

    def stream_answer(
        ctx: _Context,
        policy: KeyPolicy,
        answer: AnswerFormat,
        ids: list[list[int]],
        copies: int,
        prompt: int,
        task: str | None,
        options: dict[str, Any],
        usage_in: UsageIn,
        grant: Grant,
    ) -> EventStream:
        used = [0] * len(ids)  # each row's generated tokens so far (a row: `copies` choices)

        def close(completed: bool) -> None:
            admission.leave(len(ids))
            generated = sum(used) * copies
            grant.finish(prompt + generated)
            failed = stream.failed
            status = 200 if completed else (failed.status if failed is not None else CLIENT_GONE)
            finished(ctx, status, prompt, generated)

        def failure(exc: BaseException) -> ApiError:
            if isinstance(exc, ApiError):
                return exc
            if isinstance(exc, FtprefixClientError):
                return from_client_error(exc, ctx.request_id)
            return internal_error(exc, ctx.request_id)

        stream = EventStream(
            _events(client(), answer, ids, copies, prompt, task, options, usage_in, used),
            failure=failure,
            on_close=close,
            headers=grant.headers,
            timeout=settings.timeout,
            request_id=ctx.request_id,
        )
        return stream

    # The two generating routes as /openapi.json describes them; requests to them are answered by
    # GatewayApp through `answering` below, with the same handler.
    @app.post(
        "/v1/completions",
        response_model=None,
        responses=openapi.completion_responses(),
        openapi_extra=openapi.request_body(CompletionRequest),
    )
    async def completions(request: Request) -> Response:
        """Complete a prompt (or a batch of them) with a task: the model name."""
        return await generate(request, CompletionRequest)

    @app.post(
        "/v1/chat/completions",
        response_model=None,
        responses=openapi.chat_responses(),
        openapi_extra=openapi.request_body(ChatRequest),
    )
    async def chat_completions(request: Request) -> Response:
        """Answer chat messages, rendered with the chat template, with a task: the model name."""
        return await generate(request, ChatRequest)

    def answering(kind: type[CompletionRequest] | type[ChatRequest]) -> ASGIApp:
        """A generating route as GatewayApp calls it: errors answered by the exception handlers
        above, the request id in the response's own headers."""

        async def route(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
            request = Request(scope, receive, send)
            try:
                response = await generate(request, kind)
            except ApiError as exc:
                response = await on_api_error(request, exc)
            except Exception as exc:
                response = await on_bug(request, exc)
            except asyncio.CancelledError:
                # only the server cancels an answer: it stops, and this one outlived its stop
                # timeout. A 503 to retry, not a connection closed without an answer; the request
                # is over then, so the cancellation ends here (uvicorn would log it as a failure)
                response = error_response(request, shutting_down())
                response.raw_headers.append(_context(request).id_header)
                with contextlib.suppress(Exception):
                    await response(scope, receive, send)
                return
            response.raw_headers.append(_context(request).id_header)
            await response(scope, receive, send)

        return route

    app.generating["/v1/completions"] = answering(CompletionRequest)
    app.generating["/v1/chat/completions"] = answering(ChatRequest)
    openapi.install(app, base_model)
    return app


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")


def render_chat(template: ChatTemplate | None, body: ChatRequest) -> str:
    if template is None:
        raise ApiError(
            400,
            "this model has no chat template; use /v1/completions",
            param="messages",
            code="no_chat_template",
        )
    try:
        return template.render(body.message_dicts())
    except ChatTemplateError as exc:
        raise ApiError(400, str(exc), param="messages", code="invalid_messages") from None


class UsageIn(NamedTuple):
    """Where a stream's usage goes: a last chunk of its own (`include_usage`), and on every chunk
    as well (vLLM's `continuous_usage_stats`)."""

    end: bool
    every_chunk: bool


async def _events(
    client: AsyncClient,
    answer: AnswerFormat,
    ids: list[list[int]],
    copies: int,
    prompt_tokens: int,
    task: str | None,
    options: dict[str, Any],
    usage_in: UsageIn,
    used: list[int],
) -> AsyncIterator[bytes]:
    """The stream's events: the pieces of text of every row as they come, each as the `copies`
    choices the row answers (greedy choices of one prompt), usage, `[DONE]`. `used` counts each
    row's generated tokens as they come (for the limits, the metrics and usage on every chunk)."""

    def so_far(row: int) -> dict[str, int] | None:
        return usage(len(ids[row]), used[row]) if usage_in.every_chunk else None

    def chunks(row: int, text: str, reason: str | None) -> Iterator[bytes]:
        for index in range(row * copies, (row + 1) * copies):
            yield answer.chunk(index, text, reason, so_far(row))

    for index in range(len(ids) * copies):
        opening = answer.opening(index, so_far(index // copies))
        if opening is not None:
            yield opening
    info = await client.model_info()
    if not info.decoupled:  # the server answers once per request: one chunk per prompt
        done: list[Completion] = await client.generate_batch(ids, tasks=task, **options)
        for row, c in enumerate(done):
            used[row] = len(c.token_ids)
            for event in chunks(row, c.text or "", finish_reason(c.finish_reason)):
                yield event
    elif len(ids) == 1 and copies == 1:  # one prompt, the common case: its chunks as they come
        async for piece in client.stream(ids[0], task=task, **options):
            used[0] += len(piece.token_ids)
            reason = finish_reason(piece.finish_reason) if piece.finish_reason else None
            if piece.text or reason:
                yield answer.chunk(0, piece.text or "", reason, so_far(0))
    else:
        async for row, piece in _merged(client, ids, task, options):
            used[row] += len(piece.token_ids)
            reason = finish_reason(piece.finish_reason) if piece.finish_reason else None
            if piece.text or reason:
                for event in chunks(row, piece.text or "", reason):
                    yield event
    if usage_in.end:
        yield answer.usage_chunk(usage(prompt_tokens, sum(used) * copies))
    yield DONE


async def _merged(
    client: AsyncClient, ids: list[list[int]], task: str | None, options: dict[str, Any]
) -> AsyncIterator[tuple[int, Any]]:
    """Several prompts streamed at once, their chunks in the order they arrive."""
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    seeds = options.get("seed")  # one per prompt (schemas.py), or one for all

    async def pump(index: int, prompt: list[int]) -> None:
        own = {**options, "seed": seeds[index]} if isinstance(seeds, list) else options
        try:
            async for piece in client.stream(prompt, task=task, **own):
                await queue.put((index, piece))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            await queue.put((index, exc))
        finally:
            await queue.put((index, None))

    pumps = [asyncio.ensure_future(pump(i, p)) for i, p in enumerate(ids)]
    try:
        running = len(pumps)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for p in pumps:
            p.cancel()
