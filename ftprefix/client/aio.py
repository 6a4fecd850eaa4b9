"""`AsyncClient`: the asyncio twin of `Client`. Only its transport lives here
(tritonclient.grpc.aio); what each call does is written once, in `base.ClientBase`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from ftprefix.client.base import (
    PROBE_TIMEOUT_S,
    ClientBase,
    CloseStream,
    Emit,
    Flow,
    FlowRunner,
    Gather,
    GetConfig,
    Infer,
    IsReady,
    NextResponse,
    Op,
    OpenStream,
    Sleep,
)
from ftprefix.client.errors import FtprefixClientError, RequestTimeoutError
from ftprefix.client.failures import from_rpc_error, translate
from ftprefix.client.model_info import ModelInfo
from ftprefix.client.plan import Tasks
from ftprefix.client.types import Completion, GenerationParams, Prompt, StreamChunk
from ftprefix.client.wire import infer_inputs
from ftprefix.task_table import Task

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ftprefix.client.types import GenerateOptions


class _Stream:
    """One decoupled request: a bidirectional gRPC stream whose request iterator ends after it, so
    the server closes the stream once the request's last response is out."""

    def __init__(self, client: AsyncClient, op: OpenStream) -> None:
        self.client, self.model, self.names = client, op.model, op.outputs

        async def one_request() -> AsyncIterator[dict[str, object]]:
            yield {
                "model_name": op.model,
                "inputs": infer_inputs(op.request.arrays),
                "outputs": [grpcclient.InferRequestedOutput(n) for n in op.outputs],
                "parameters": op.request.parameters,
            }

        self.responses = client._grpc.stream_infer(one_request(), stream_timeout=client.timeout)
        self.iterator = self.responses.__aiter__()

    async def next(self) -> dict[str, np.ndarray] | None:
        client = self.client
        while True:
            try:
                result, error = await asyncio.wait_for(anext(self.iterator), client.timeout)
            except StopAsyncIteration:
                return None
            except asyncio.TimeoutError:
                raise RequestTimeoutError(client.url, client.timeout) from None
            except grpc.RpcError as exc:
                raise translate(from_rpc_error(exc), client.url, self.model, client.timeout) from exc
            except InferenceServerException as exc:
                raise translate(exc, client.url, self.model, client.timeout) from exc
            if error is not None:
                raise translate(error, client.url, self.model, client.timeout) from error
            outputs = {name: result.as_numpy(name) for name in self.names}
            if all(value is not None for value in outputs.values()):
                return outputs

    def close(self) -> None:
        self.responses.cancel()


class AsyncClient(ClientBase):
    """The asyncio twin of `Client`: same arguments, same results, awaitable.

    >>> async with AsyncClient("localhost:8001", tokenizer="path/to/hf_model") as client:
    ...     completion = await client.generate("Hello", task="taskA")

    Many coroutines may share one AsyncClient; each call is its own gRPC request or stream, sent
    concurrently, so the server's dynamic batcher can merge them.
    """

    _channel: aioclient.InferenceServerClient | None = None

    @property
    def _grpc(self) -> aioclient.InferenceServerClient:
        # created lazily so the channel binds to the event loop that uses it
        if self._channel is None:
            self._channel = aioclient.InferenceServerClient(self.url)
        return self._channel

    async def close(self) -> None:
        """Close the gRPC channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- public calls --------------------------------------------------------------------------

    async def model_info(self, refresh: bool = False) -> ModelInfo:
        """The `fastertransformer` model's config (task table, decoupled or not), cached."""
        return await self._run(self._model_info_flow(refresh))

    async def tasks(self, refresh: bool = False) -> list[Task]:
        """The tasks the server serves (id, name, prompt length), read from its model config."""
        return list((await self.model_info(refresh)).tasks)

    async def generate(
        self, prompt: Prompt, *, task: str | None = None, **options: Unpack[GenerateOptions]
    ) -> Completion:
        """Continue one prompt with task `task` (None: the base model); see `Client.generate`."""
        return (await self.generate_batch([prompt], tasks=task, **options))[0]

    async def generate_batch(
        self, prompts: Sequence[Prompt], *, tasks: Tasks = None, **options: Unpack[GenerateOptions]
    ) -> list[Completion]:
        """Continue many prompts, each with its own task; see `Client.generate_batch`."""
        return await self._run(self._generate_flow(prompts, tasks, GenerationParams.from_options(options)))

    async def stream(
        self, prompt: Prompt, *, task: str | None = None, **options: Unpack[GenerateOptions]
    ) -> AsyncIterator[StreamChunk]:
        """Yield new tokens (and text) as they come; see `Client.stream`."""
        params = GenerationParams.from_options(options)
        async for chunk in self._iterate(self._stream_flow(prompt, task, params)):
            yield chunk

    # -- driving flows -------------------------------------------------------------------------

    async def _run(self, flow: Flow[Any]) -> Any:
        box: list[Any] = []
        async for _ in self._iterate(flow, box):
            raise AssertionError("a generate flow emits nothing")
        return box[0]

    async def _iterate(self, flow: Flow[Any], result: list[Any] | None = None) -> AsyncIterator[Any]:
        """Drive `flow`: perform its operations, yield what it emits; its return value goes to `result`."""
        runner, streams = FlowRunner(flow), list[_Stream]()
        try:
            while (op := runner.next_op()) is not None:
                if isinstance(op, Emit):
                    yield op.item
                    continue
                try:
                    runner.value = await self._perform(op, streams)
                except FtprefixClientError as exc:
                    runner.error = exc
            if result is not None:
                result.append(runner.result)
        finally:
            flow.close()
            for stream in streams:
                stream.close()

    async def _perform(self, op: Op, streams: list[_Stream]) -> Any:
        if isinstance(op, Sleep):
            await asyncio.sleep(op.seconds)  # backoff between retries
            return None
        if isinstance(op, Gather):
            return list(await asyncio.gather(*(self._run(flow) for flow in op.flows)))
        if isinstance(op, OpenStream):
            stream = _Stream(self, op)
            streams.append(stream)
            return stream
        if isinstance(op, NextResponse):
            return await op.handle.next()
        if isinstance(op, CloseStream):
            streams.remove(op.handle)
            op.handle.close()
            return None
        if isinstance(op, (IsReady, GetConfig)):
            # many coroutines starting at once share one probe of the server
            if op not in self._probes:
                self._probes[op] = asyncio.ensure_future(self._call(op))
                self._probes[op].add_done_callback(lambda _f, op=op: self._probes.pop(op, None))
            return await asyncio.shield(self._probes[op])
        return await self._call(op)

    async def _call(self, op: IsReady | GetConfig | Infer) -> Any:
        try:
            if isinstance(op, IsReady):
                return await self._grpc.is_model_ready(op.model, client_timeout=PROBE_TIMEOUT_S)
            if isinstance(op, GetConfig):
                return await self._grpc.get_model_config(
                    op.model, as_json=True, client_timeout=PROBE_TIMEOUT_S
                )
            result = await self._grpc.infer(
                op.model,
                infer_inputs(op.request.arrays),
                outputs=[grpcclient.InferRequestedOutput(n) for n in op.outputs],
                client_timeout=self.timeout,
                parameters=op.request.parameters,
            )
            return {name: result.as_numpy(name) for name in op.outputs}
        except InferenceServerException as exc:
            raise translate(exc, self.url, op.model, self.timeout) from exc
