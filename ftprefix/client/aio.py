"""`AsyncClient`: the asyncio gRPC client (tritonclient.grpc.aio), for services."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from ftprefix import protocol
from ftprefix.client.common import (
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    PROBE_TIMEOUT_S,
    TASK_TABLE_TTL_S,
    ClientBase,
)
from ftprefix.client.errors import ModelNotReadyError, TaskTableChangedError
from ftprefix.client.failures import from_rpc_error, is_connection_failure, translate
from ftprefix.client.model_info import ModelInfo
from ftprefix.client.plan import ChunkMaker, Collector, Plan, Prompt, Request, Stop
from ftprefix.client.sync import infer_inputs
from ftprefix.client.tokenizer import ClientTokenizer
from ftprefix.client.types import Completion, SamplingParams, StreamChunk
from ftprefix.task_table import Task as TaskInfo

T = TypeVar("T")


class AsyncClient(ClientBase):
    """The asyncio twin of `Client`: same arguments, same results, awaitable.

    >>> async with AsyncClient("localhost:8001", tokenizer="path/to/hf_model") as client:
    ...     completion = await client.generate("Hello", task="taskA")

    Many coroutines may share one AsyncClient; each call is its own gRPC request or stream.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        tokenizer: str | os.PathLike[str] | ClientTokenizer | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        connect_retries: int = 3,
        retry_delay: float = 0.2,
        task_table_ttl: float | None = TASK_TABLE_TTL_S,
    ) -> None:
        """See `Client`; the gRPC channel opens on first use."""
        super().__init__(url, tokenizer, timeout, connect_retries, retry_delay, task_table_ttl)
        self._grpc_client: aioclient.InferenceServerClient | None = None
        self._info_lock: asyncio.Lock | None = None

    @property
    def _grpc(self) -> aioclient.InferenceServerClient:
        # created lazily so the channel binds to the event loop that uses it
        if self._grpc_client is None:
            self._grpc_client = aioclient.InferenceServerClient(self.url)
        return self._grpc_client

    async def close(self) -> None:
        """Close the gRPC channel."""
        if self._grpc_client is not None:
            await self._grpc_client.close()
            self._grpc_client = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- server state ------------------------------------------------------------------------
    async def _retrying(self, model: str, probe: Callable[[], Awaitable[T]]) -> T:
        delay = self.retry_delay
        for attempt in range(self.connect_retries + 1):
            try:
                return await probe()
            except InferenceServerException as exc:
                if not is_connection_failure(exc) or attempt == self.connect_retries:
                    raise translate(exc, self.url, model, PROBE_TIMEOUT_S) from None
            await asyncio.sleep(delay)  # backoff before reconnecting; only probes are ever retried
            delay *= 2
        raise AssertionError("unreachable")

    async def _wait_ready(self, model: str) -> None:
        delay = self.retry_delay
        for attempt in range(self.connect_retries + 1):
            if await self._retrying(
                model, lambda: self._grpc.is_model_ready(model, client_timeout=PROBE_TIMEOUT_S)
            ):
                return
            if attempt < self.connect_retries:
                await asyncio.sleep(delay)  # the model may still be loading
                delay *= 2
        raise ModelNotReadyError(self.url, model)

    async def _load_info(self, model: str) -> ModelInfo:
        await self._wait_ready(model)
        config = await self._retrying(
            model, lambda: self._grpc.get_model_config(model, as_json=True, client_timeout=PROBE_TIMEOUT_S)
        )
        return ModelInfo.from_config(config)

    async def model_info(self, refresh: bool = False) -> ModelInfo:
        """The `fastertransformer` model's config (task table, decoupled or not), cached."""
        if self._info_lock is None:
            self._info_lock = asyncio.Lock()
        async with self._info_lock:  # 32 first requests at once read the config once
            if self._info_is_stale(refresh) or self._model_info is None:
                return self._store_info(await self._load_info(protocol.FT_MODEL))
            return self._model_info

    async def _ensemble(self) -> ModelInfo | None:
        if not self._ensemble_checked:
            ready = await self._retrying(
                protocol.ENSEMBLE_MODEL,
                lambda: self._grpc.is_model_ready(protocol.ENSEMBLE_MODEL, client_timeout=PROBE_TIMEOUT_S),
            )
            self._ensemble_info = await self._load_info(protocol.ENSEMBLE_MODEL) if ready else None
            self._ensemble_checked = True
        return self._ensemble_info

    async def tasks(self, refresh: bool = False) -> list[TaskInfo]:
        """The tasks the server serves (id, name, prompt length), read from its model config."""
        return list((await self.model_info(refresh)).tasks)

    async def _resolve(
        self,
        prompts: Sequence[Prompt],
        tasks: str | Sequence[str | None] | None,
        params: SamplingParams,
        stop: Sequence[Stop] | None,
    ) -> tuple[ModelInfo, Plan]:
        info = await self.model_info()
        if not self._known(info, tasks):
            info = await self.model_info(refresh=True)  # the server may have been restarted with new tasks
        ensemble = await self._ensemble() if self._needs_ensemble(prompts) else None
        return info, self._plan(info, ensemble, prompts, tasks, params, stop)

    # -- generation --------------------------------------------------------------------------
    async def generate(
        self,
        prompt: Prompt,
        *,
        task: str | None = None,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Sequence[Stop] | None = None,
    ) -> Completion:
        """Continue one prompt with task `task` (None: the base model); see `Client.generate`."""
        completions = await self.generate_batch(
            [prompt],
            tasks=task,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop=stop,
        )
        return completions[0]

    async def generate_batch(
        self,
        prompts: Sequence[Prompt],
        *,
        tasks: str | Sequence[str | None] | None = None,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Sequence[Stop] | None = None,
    ) -> list[Completion]:
        """Continue many prompts, each with its own task; see `Client.generate_batch`."""
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
        try:
            return await self._run_plan(*await self._resolve(prompts, tasks, params, stop))
        except TaskTableChangedError:
            # refused before anything ran: read the task table again and resend once
            await self.model_info(refresh=True)
            return await self._run_plan(*await self._resolve(prompts, tasks, params, stop))

    async def _run_plan(self, info: ModelInfo, plan: Plan) -> list[Completion]:
        answers = await asyncio.gather(*(self._run(info, plan, request) for request in plan.requests()))
        results = {row: completion for answer in answers for row, completion in answer}
        return [results[i] for i in range(len(plan.rows))]

    async def _run(self, info: ModelInfo, plan: Plan, request: Request) -> list[tuple[int, Completion]]:
        collector = Collector(plan, request)
        if info.decoupled:  # the ensemble streams too when its fastertransformer step does
            async for outputs in self._stream_outputs(plan.info, request):
                collector.add(outputs)
        else:
            collector.add(await self._infer(plan.info, request))
        return collector.completions()

    async def stream(
        self,
        prompt: Prompt,
        *,
        task: str | None = None,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Sequence[Stop] | None = None,
    ) -> AsyncIterator[StreamChunk]:
        """Yield new tokens (and text) as they come; see `Client.stream`."""
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
        for attempt in (1, 2):
            info, plan = await self._resolve([prompt], task, params, stop)
            self._check_streamable(info, plan)
            responses = self._stream_outputs(info, plan.requests()[0])
            try:
                first = await anext(responses, None)
                break
            except TaskTableChangedError:
                if attempt == 2:
                    raise
                await self.model_info(refresh=True)  # refused before anything ran: resend once
        maker = ChunkMaker(plan)
        outputs = first
        while outputs is not None:
            chunk = maker.update(outputs[protocol.OUTPUT_IDS], outputs[protocol.SEQUENCE_LENGTH])
            if chunk is not None:
                yield chunk
            outputs = await anext(responses, None)
        closing = maker.close()
        if closing is not None:
            yield closing

    # -- transport ---------------------------------------------------------------------------
    async def _infer(self, info: ModelInfo, request: Request) -> dict[str, np.ndarray]:
        names = self._outputs(info)
        try:
            result = await self._grpc.infer(
                info.name,
                infer_inputs(request.arrays),
                outputs=[grpcclient.InferRequestedOutput(n) for n in names],
                client_timeout=self.timeout,
                parameters=request.parameters,
            )
        except InferenceServerException as exc:
            raise translate(exc, self.url, info.name, self.timeout) from None
        return {name: result.as_numpy(name) for name in names}

    async def _stream_outputs(
        self, info: ModelInfo, request: Request
    ) -> AsyncIterator[dict[str, np.ndarray]]:
        """The outputs of each response of a decoupled model.

        The request iterator ends after one request, so the server closes the stream once that
        request's last response is out.
        """

        names = self._outputs(info)

        async def one_request() -> AsyncIterator[dict[str, object]]:
            yield {
                "model_name": info.name,
                "inputs": infer_inputs(request.arrays),
                "outputs": [grpcclient.InferRequestedOutput(n) for n in names],
                "parameters": request.parameters,
            }

        responses = self._grpc.stream_infer(one_request(), stream_timeout=self.timeout)
        try:
            async for result, error in responses:
                if error is not None:
                    raise translate(error, self.url, info.name, self.timeout)
                outputs = {name: result.as_numpy(name) for name in names}
                if all(value is not None for value in outputs.values()):
                    yield outputs
        except grpc.RpcError as exc:
            raise translate(from_rpc_error(exc), self.url, info.name, self.timeout) from None
        except InferenceServerException as exc:
            raise translate(exc, self.url, info.name, self.timeout) from None
        finally:
            responses.cancel()
