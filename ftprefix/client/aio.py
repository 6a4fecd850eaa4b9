"""`AsyncClient`: the asyncio twin of `Client`. Only its transport lives here: Triton's gRPC
service through grpc.aio and the service's generated stub (tritonclient.grpc.service_pb2_grpc),
with requests built as protobuf messages straight from numpy (`wire.infer_request`), and, with
`http_url`, generations over Triton's HTTP endpoint (`http_infer`, `http_stream`); what each call
does is written once, in `base.ClientBase`."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf.json_format import MessageToJson
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from ftprefix.client.base import (
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    RESOLVE_EVERY_S,
    TASK_TABLE_TTL_S,
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
    normalize_http_url,
    stream_outputs,
)
from ftprefix.client.errors import FtprefixClientError
from ftprefix.client.failures import from_rpc_error, translate
from ftprefix.client.http_infer import HttpInferPool
from ftprefix.client.http_stream import HttpStream, one_row, streams_over_http
from ftprefix.client.model_info import ModelInfo
from ftprefix.client.plan import Tasks
from ftprefix.client.types import Completion, GenerationParams, Prompt, StreamChunk
from ftprefix.client.wire import channel_options, infer_request, response_arrays
from ftprefix.task_table import Task
from ftprefix.text import Tokenizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ftprefix.client.types import GenerateOptions


class _Stream:
    """One decoupled request: a bidirectional gRPC stream whose request iterator ends after it, so
    the server closes the stream once the request's last response is out. Its gRPC deadline bounds
    the whole generation, as `timeout` bounds a whole unary call."""

    def __init__(self, client: AsyncClient, op: OpenStream) -> None:
        self.client, self.model, self.names = client, op.model, op.outputs
        request = infer_request(op.model, op.request.arrays, op.outputs, op.request.parameters)
        self.call = client._stub.ModelStreamInfer(iter((request,)), timeout=client.timeout)
        self.iterator = self.call.__aiter__()

    async def next(self) -> dict[str, np.ndarray] | None:
        client = self.client
        while True:
            try:
                response = await anext(self.iterator)
            except StopAsyncIteration:
                return None
            except grpc.RpcError as exc:
                raise translate(from_rpc_error(exc), client.url, self.model, client.timeout) from exc
            outputs = stream_outputs(response, self.names, client.url, self.model, client.timeout)
            if outputs is not None:
                return outputs

    def close(self) -> None:
        self.call.cancel()


class _HttpStreamCall:
    """`_Stream`'s twin over Triton's HTTP endpoint (`http_stream.HttpStream`)."""

    def __init__(self, client: AsyncClient, pool: HttpInferPool, op: OpenStream) -> None:
        self.client, self.model, self.names = client, op.model, op.outputs
        arrays, parameters = op.request.arrays, op.request.parameters
        self.stream = HttpStream(pool, op.model, arrays, op.outputs, parameters, client.timeout)

    async def next(self) -> dict[str, np.ndarray] | None:
        client = self.client
        while True:
            try:
                outputs = await self.stream.next()
            except InferenceServerException as exc:
                url = self.stream.pool.url
                raise translate(exc, url, self.model, client.timeout, option="--http-url") from exc
            if outputs is None or len(outputs) == len(self.names):  # not an empty final response
                return outputs

    def close(self) -> None:
        self.stream.close()


# how long a channel given up for a new one has to finish its calls when the client has no timeout
RETIRED_CHANNEL_GRACE_S = 3600.0


class AsyncClient(ClientBase):
    """The asyncio twin of `Client`: same arguments, same results, awaitable.

    >>> async with AsyncClient("localhost:8001", tokenizer="path/to/hf_model") as client:
    ...     completion = await client.generate("Hello", task="taskA")

    Many coroutines may share one AsyncClient; each call is its own gRPC request or stream, sent
    concurrently, so the server's dynamic batcher can merge them.
    """

    _channel: grpc.aio.Channel | None = None
    _grpc_stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        http_url: str | None = None,
        tokenizer: str | os.PathLike[str] | Tokenizer | None = None,
        newline_token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        connect_retries: int = 3,
        retry_delay: float = 0.2,
        task_table_ttl: float | None = TASK_TABLE_TTL_S,
        resolve_every: float | None = RESOLVE_EVERY_S,
    ) -> None:
        """As `Client`, plus `http_url`: the same server's HTTP address (host:port, e.g.
        localhost:8000). Then generations go over HTTP/1.1 keep-alive connections, which cost this
        process less CPU per call than gRPC (benchmarks/client.py): whole answers always, streams
        where the server's Triton has the generate extension checked here (2.51 and newer, which
        `ftprefix serve` runs; older ones stream over gRPC). Probes and the model's config stay on
        gRPC at `url`."""
        super().__init__(
            url,
            tokenizer=tokenizer,
            newline_token=newline_token,
            timeout=timeout,
            connect_retries=connect_retries,
            retry_delay=retry_delay,
            task_table_ttl=task_table_ttl,
            resolve_every=resolve_every,
        )
        self.http_url = normalize_http_url(http_url) if http_url is not None else None
        self._http = HttpInferPool(self.http_url) if self.http_url is not None else None
        self._http_streams: asyncio.Future[str] | None = None  # whether streams go over HTTP too
        self._retired: dict[grpc.aio.Channel, asyncio.Task[None]] = {}

    @property
    def _stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        # created lazily so the channel binds to the event loop that uses it
        if self._grpc_stub is None or self._channel_due():
            self._open_channel()
        assert self._grpc_stub is not None
        return self._grpc_stub

    def _open_channel(self) -> None:
        retired = self._channel
        options = channel_options(self.url)
        if self.tls:
            self._channel = grpc.aio.secure_channel(self.url, grpc.ssl_channel_credentials(), options=options)
        else:
            self._channel = grpc.aio.insecure_channel(self.url, options=options)
        self._grpc_stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._channel_opened()
        if retired is not None:  # its calls may run as long as the timeout lets them
            grace = RETIRED_CHANNEL_GRACE_S if self.timeout is None else self.timeout
            closing = asyncio.get_running_loop().create_task(retired.close(grace))
            self._retired[retired] = closing
            closing.add_done_callback(lambda _: self._retired.pop(retired, None))

    async def close(self) -> None:
        """Close the gRPC channels and the HTTP connections."""
        if self._http is not None:
            await self._http.close()
        for retired, closing in list(self._retired.items()):
            closing.cancel()
            await retired.close()
        self._retired.clear()
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._grpc_stub = None

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

    def stream(
        self, prompt: Prompt, *, task: str | None = None, **options: Unpack[GenerateOptions]
    ) -> AsyncIterator[StreamChunk]:
        """Yield new tokens (and text) as they come; see `Client.stream`. Options are checked
        here, as `Client.stream` does, before the first chunk is asked for."""
        params = GenerationParams.from_options(options)
        return self._iterate(self._stream_flow(prompt, task, params))

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
        if type(op) is NextResponse:  # a stream's every step: checked first
            return await op.handle.next()
        if isinstance(op, Sleep):
            await asyncio.sleep(op.seconds)  # backoff between retries
            return None
        if isinstance(op, Gather):
            return list(await asyncio.gather(*(self._run(flow) for flow in op.flows)))
        if isinstance(op, OpenStream):
            http = self._http
            stream: _Stream | _HttpStreamCall
            if http is not None and one_row(op.request.arrays) and await self._streams_over_http(http):
                stream = _HttpStreamCall(self, http, op)
            else:
                stream = _Stream(self, op)
            streams.append(stream)
            return stream
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
        if isinstance(op, Infer):
            return await self._infer(op)
        return await self._call(op)

    async def _call(self, op: IsReady | GetConfig | Infer) -> Any:
        stub = self._stub
        try:
            if isinstance(op, IsReady):
                ready = service_pb2.ModelReadyRequest(name=op.model)
                return (await stub.ModelReady(ready, timeout=self.probe_timeout)).ready
            if isinstance(op, GetConfig):
                config = service_pb2.ModelConfigRequest(name=op.model)
                response = await stub.ModelConfig(config, timeout=self.probe_timeout)
                return json.loads(MessageToJson(response, preserving_proto_field_name=True))
            request = infer_request(op.model, op.request.arrays, op.outputs, op.request.parameters)
            return response_arrays(await stub.ModelInfer(request, timeout=self.timeout), op.outputs)
        except grpc.RpcError as exc:
            raise self._failed(from_rpc_error(exc), op) from exc

    async def _streams_over_http(self, http: HttpInferPool) -> bool:
        """Whether the server at `http_url` streams (generate_stream), asked once: many coroutines
        starting at once share the question."""
        if self._http_streams is None:
            self._http_streams = asyncio.ensure_future(http.server_version(self.probe_timeout))
        probe = self._http_streams
        try:
            version = await asyncio.shield(probe)
        except InferenceServerException as exc:
            if self._http_streams is probe:
                self._http_streams = None  # ask again next time
            asked = "for its version (whether it streams over HTTP)"
            raise translate(
                exc, http.url, "the server", self.probe_timeout, option="--http-url", asked=asked
            ) from exc
        return streams_over_http(version)

    async def _infer(self, op: Infer) -> dict[str, np.ndarray]:
        if self._http is None:
            return await self._call(op)
        request = op.request
        try:
            return await self._http.infer(
                op.model, request.arrays, op.outputs, request.parameters, self.timeout
            )
        except InferenceServerException as exc:
            raise translate(exc, self._http.url, op.model, self.timeout, option="--http-url") from exc
