"""The OpenAI-compatible HTTP API in front of Triton: the task is the model name.

Like vLLM serving LoRA adapters as model names, every prefix-tuned task of the server's task table
is a model (`model="smileface"`) and the base model is one more, under its own name. Requests go
to Triton through `ftprefix.client.AsyncClient`, concurrently, so Triton's dynamic batcher merges
them. The task table is re-read as the client's table ages, so tasks added on the server appear.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse

from ftprefix.client import (
    AsyncClient,
    FtprefixClientError,
    InvalidRequestError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerUnavailableError,
    UnknownTaskError,
)
from ftprefix.gateway import schemas
from ftprefix.gateway.schemas import ApiError, CompletionRequest

OWNER = "ftprefix"


def api_error(exc: FtprefixClientError) -> ApiError:
    """A client error as the HTTP status and body an OpenAI client understands."""
    if isinstance(exc, UnknownTaskError):
        return ApiError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, InvalidRequestError):
        return ApiError(400, str(exc), code="invalid_request")
    if isinstance(exc, (ServerUnavailableError, ModelNotReadyError)):
        return ApiError(503, str(exc), code="triton_unavailable", kind="service_unavailable")
    if isinstance(exc, RequestTimeoutError):
        return ApiError(504, str(exc), code="triton_timeout", kind="timeout")
    return ApiError(500, str(exc), code="triton_error")


def create_app(
    triton_url: str, tokenizer_dir: str | os.PathLike[str], base_model: str, *, timeout: float = 120.0
) -> FastAPI:
    """`base_model`: the name under which the base model (no task) is served."""
    holder: dict[str, AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        holder["client"] = AsyncClient(
            triton_url, tokenizer=tokenizer_dir, timeout=timeout, connect_retries=0
        )
        try:
            yield
        finally:
            await holder["client"].close()

    app = FastAPI(title="ftprefix OpenAI-compatible API", lifespan=lifespan)

    def client() -> AsyncClient:
        return holder["client"]

    @app.exception_handler(ApiError)
    async def on_api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid request')}"
        return JSONResponse(ApiError(400, message, param=loc[0] if loc else None).body(), status_code=400)

    async def task_of(model: str) -> str | None:
        """The task a model name means (None: the base model), or ApiError(404)."""
        if model == base_model:
            return None
        try:
            info = await client().model_info()
            if info.tasks.find(model) is None:
                info = await client().model_info(refresh=True)  # a task added since the last read
        except FtprefixClientError as exc:
            raise api_error(exc) from exc
        if info.tasks.find(model) is None:
            served = ", ".join([base_model, *info.tasks.names])
            raise ApiError(
                404,
                f"the model {model!r} does not exist; served: {served}",
                param="model",
                code="model_not_found",
            )
        return model

    def model_card(name: str, created: int, parent: str | None) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": OWNER, "parent": parent}

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 once Triton answers with the model ready (for readiness probes), 503 otherwise."""
        try:
            await client().model_info(refresh=True)
        except FtprefixClientError as exc:
            return JSONResponse(api_error(exc).body(), status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        try:
            info = await client().model_info(refresh=True)  # the server's table as it is now
        except FtprefixClientError as exc:
            raise api_error(exc) from exc
        created = schemas.now()
        cards = [model_card(base_model, created, None)]
        cards += [model_card(t.name, created, base_model) for t in info.tasks if t.name != base_model]
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{model}")
    async def model(model: str) -> dict[str, Any]:
        task = await task_of(model)
        return model_card(model, schemas.now(), None if task is None else base_model)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> Any:
        options = body.generate_options()
        task = await task_of(body.model)
        prompts = body.prompts()
        cid, created = schemas.completion_id(), schemas.now()
        if body.stream:
            return EventSourceResponse(_stream(client(), body, task, prompts, options, cid, created), ping=15)
        try:
            done = await client().generate_batch(prompts, tasks=task, **options)
        except FtprefixClientError as exc:
            raise api_error(exc) from exc
        choices = [
            schemas.choice(i, c.text or "", schemas.finish_reason(c.finish_reason))
            for i, c in enumerate(done)
        ]
        prompt_tokens = sum(c.prompt_token_count or 0 for c in done)
        use = schemas.usage(prompt_tokens, sum(len(c.token_ids) for c in done))
        # plain JSON types already: skip FastAPI's jsonable_encoder pass over the body
        return JSONResponse(schemas.completion(cid, created, body.model, choices, use))

    return app


async def _stream(
    client: AsyncClient,
    body: CompletionRequest,
    task: str | None,
    prompts: list[Any],
    options: dict[str, Any],
    cid: str,
    created: int,
) -> AsyncIterator[str]:
    """SSE data in OpenAI's format: one chunk per piece of text of any prompt, then `[DONE]`."""

    def chunk(index: int, text: str, reason: str | None) -> str:
        return json.dumps(
            schemas.completion(cid, created, body.model, [schemas.choice(index, text, reason)], None)
        )

    prompt_tokens = completion_tokens = 0
    try:
        info = await client.model_info()
        if not info.decoupled:  # the server answers once per request: one chunk per prompt
            for i, c in enumerate(await client.generate_batch(prompts, tasks=task, **options)):
                prompt_tokens += c.prompt_token_count or 0
                completion_tokens += len(c.token_ids)
                yield chunk(i, c.text or "", schemas.finish_reason(c.finish_reason))
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
                            yield chunk(index, item.text or "", reason)
            finally:
                for p in pumps:
                    p.cancel()
            prompt_tokens = sum(prompt_counts.values())
        if body.include_usage:
            use = schemas.usage(prompt_tokens, completion_tokens)
            yield json.dumps(schemas.completion(cid, created, body.model, [], use))
    except FtprefixClientError as exc:
        yield json.dumps(api_error(exc).body())  # the stream has started: the error goes in it
    yield "[DONE]"
