"""`Client`: the blocking gRPC client. Only its transport lives here (tritonclient.grpc; streams on
the service's generated stub, as AsyncClient's); what each call does is written once, in
`base.ClientBase`."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from ftprefix.client.base import (
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
    stream_outputs,
)
from ftprefix.client.errors import FtprefixClientError
from ftprefix.client.failures import from_rpc_error, translate
from ftprefix.client.model_info import ModelInfo
from ftprefix.client.plan import Tasks
from ftprefix.client.types import Completion, GenerationParams, Prompt, StreamChunk
from ftprefix.client.wire import channel_options, infer_inputs, infer_request, output_arrays
from ftprefix.task_table import Task

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ftprefix.client.types import GenerateOptions


class ResponseStream:
    """One request to a decoupled model on a gRPC stream of its own, whose request iterator ends
    after the request (as AsyncClient's `_Stream`): the server closes the stream once the request's
    last response is out, and its gRPC deadline bounds the whole generation. tritonclient's
    `start_stream`, stopped with cancel_requests=True, left the thread that waits for the stream's
    next request waiting for the rest of the process (its request queue is ended only without
    cancelling): a thread per stream."""

    def __init__(self, url: str, tls: bool, timeout: float | None, op: OpenStream) -> None:
        self.url, self.timeout, self.model, self.names = url, timeout, op.model, op.outputs
        options = channel_options(url)
        if tls:
            self.channel = grpc.secure_channel(url, grpc.ssl_channel_credentials(), options=options)
        else:
            self.channel = grpc.insecure_channel(url, options=options)
        try:
            request = infer_request(op.model, op.request.arrays, op.outputs, op.request.parameters)
            stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
            self.call = stub.ModelStreamInfer(iter((request,)), timeout=timeout)
        except BaseException:
            self.channel.close()
            raise

    def next(self) -> dict[str, np.ndarray] | None:
        while True:
            try:
                response = next(self.call)
            except StopIteration:
                return None
            except grpc.RpcError as exc:
                raise translate(from_rpc_error(exc), self.url, self.model, self.timeout) from exc
            outputs = stream_outputs(response, self.names, self.url, self.model, self.timeout)
            if outputs is not None:
                return outputs

    def close(self) -> None:
        self.call.cancel()  # nothing, once the stream has ended
        self.channel.close()


class Client(ClientBase):
    """Generate with a served GPT-NeoX model, choosing the prefix-tuned task per request.

    >>> client = Client("localhost:8001", tokenizer="path/to/hf_model")
    >>> client.generate("Hello", task="taskA", max_new_tokens=16).text

    Task names are read from the server and checked before anything is sent. Without a tokenizer,
    text goes through the server's `ensemble` model (if it has one); token ids always go to the
    `fastertransformer` model. Connection set-up and readiness checks are retried with backoff; a
    generation request is re-sent only when the server refused it because its task ids moved.
    Options of every generating call: see `GenerateOptions` / `GenerationParams`.
    """

    _channel: grpcclient.InferenceServerClient | None = None

    @property
    def _grpc(self) -> grpcclient.InferenceServerClient:
        if self._channel is None or self._channel_due():
            # the old channel is not closed here: a call another thread has in flight on it
            # finishes there, and it closes when the last of them lets go of it (tritonclient's
            # __del__); the connections it shares with the new one carry over
            self._channel = grpcclient.InferenceServerClient(
                self.url, ssl=self.tls, channel_args=channel_options(self.url)
            )
            self._channel_opened()
        return self._channel

    def close(self) -> None:
        """Close the gRPC channel."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public calls --------------------------------------------------------------------------

    def model_info(self, refresh: bool = False) -> ModelInfo:
        """The `fastertransformer` model's config (task table, decoupled or not), cached."""
        return self._run(self._model_info_flow(refresh))

    def tasks(self, refresh: bool = False) -> list[Task]:
        """The tasks the server serves (id, name, prompt length), read from its model config."""
        return list(self.model_info(refresh).tasks)

    def generate(
        self, prompt: Prompt, *, task: str | None = None, **options: Unpack[GenerateOptions]
    ) -> Completion:
        """Continue one prompt (text or token ids) with task `task` (None: the base model).

        Greedy by default (FT: top_k = top_p = 0); `stop` ends generation right after one of its
        strings or token-id sequences."""
        return self.generate_batch([prompt], tasks=task, **options)[0]

    def generate_batch(
        self, prompts: Sequence[Prompt], *, tasks: Tasks = None, **options: Unpack[GenerateOptions]
    ) -> list[Completion]:
        """Continue many prompts, each with its own task (`tasks[i]` for `prompts[i]`, or one name
        for all). FT has no id for "no task", so base-model rows (task None) go in a request of
        their own."""
        return self._run(self._generate_flow(prompts, tasks, GenerationParams.from_options(options)))

    def stream(
        self, prompt: Prompt, *, task: str | None = None, **options: Unpack[GenerateOptions]
    ) -> Iterator[StreamChunk]:
        """Yield the new tokens (and text) of one prompt as the server produces them.

        Needs a decoupled model (`ftprefix serve --streaming`); the last chunk carries the finish
        reason. Concatenated, the chunks equal `generate(...)`'s token ids and text."""
        params = GenerationParams.from_options(options)
        return self._iterate(self._stream_flow(prompt, task, params))

    # -- driving flows -------------------------------------------------------------------------

    def _run(self, flow: Flow[Any]) -> Any:
        steps = self._iterate(flow)
        try:
            while True:
                next(steps)
        except StopIteration as stop:
            return stop.value

    def _iterate(self, flow: Flow[Any]) -> Any:
        """Drive `flow`: perform its operations, yield what it emits, return what it returns."""
        runner, streams = FlowRunner(flow), list[ResponseStream]()
        try:
            while (op := runner.next_op()) is not None:
                if isinstance(op, Emit):
                    yield op.item
                    continue
                try:
                    runner.value = self._perform(op, streams)
                except FtprefixClientError as exc:
                    runner.error = exc
            return runner.result
        finally:
            flow.close()
            for stream in streams:
                stream.close()

    def _perform(self, op: Op, streams: list[ResponseStream]) -> Any:
        if isinstance(op, Sleep):
            time.sleep(op.seconds)  # backoff between retries
            return None
        if isinstance(op, Gather):
            return [self._run(flow) for flow in op.flows]
        if isinstance(op, OpenStream):
            stream = ResponseStream(self.url, self.tls, self.timeout, op)
            streams.append(stream)
            return stream
        if isinstance(op, NextResponse):
            return op.handle.next()
        if isinstance(op, CloseStream):
            streams.remove(op.handle)
            op.handle.close()
            return None
        model = op.model
        try:
            if isinstance(op, IsReady):
                return self._grpc.is_model_ready(model, client_timeout=self.probe_timeout)
            if isinstance(op, GetConfig):
                return self._grpc.get_model_config(model, as_json=True, client_timeout=self.probe_timeout)
            assert isinstance(op, Infer)
            result = self._grpc.infer(
                model,
                infer_inputs(op.request.arrays),
                outputs=[grpcclient.InferRequestedOutput(n) for n in op.outputs],
                client_timeout=self.timeout,
                parameters=op.request.parameters,
            )
            return output_arrays(result, op.outputs)
        except InferenceServerException as exc:
            raise self._failed(exc, op) from exc
