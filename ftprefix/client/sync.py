"""`Client`: the blocking gRPC client (tritonclient.grpc)."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from ftprefix import protocol
from ftprefix.client.common import (
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    PROBE_TIMEOUT_S,
    TASK_TABLE_TTL_S,
    ClientBase,
)
from ftprefix.client.errors import ModelNotReadyError, RequestTimeoutError, TaskTableChangedError
from ftprefix.client.failures import is_connection_failure, translate
from ftprefix.client.model_info import ModelInfo
from ftprefix.client.plan import ChunkMaker, Collector, Plan, Prompt, Request, Stop
from ftprefix.client.tokenizer import ClientTokenizer
from ftprefix.client.types import Completion, SamplingParams, StreamChunk
from ftprefix.task_table import Task as TaskInfo

T = TypeVar("T")


def infer_inputs(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    """tritonclient inputs from named numpy arrays (the aio client uses the same classes)."""
    inputs = []
    for name, array in arrays.items():
        item = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        item.set_data_from_numpy(array)
        inputs.append(item)
    return inputs


def _is_final(result: grpcclient.InferResult) -> bool:
    parameters = result.get_response().parameters
    return "triton_final_response" in parameters and parameters["triton_final_response"].bool_param


class Client(ClientBase):
    """Generate with a served GPT-NeoX model, choosing the prefix-tuned task per request.

    >>> client = Client("localhost:8001", tokenizer="path/to/hf_model")
    >>> client.generate("Hello", task="taskA", max_new_tokens=16).text

    Task names are read from the server once and checked before anything is sent. Without a
    tokenizer, text goes through the server's `ensemble` model (if it has one); token ids always go
    to the `fastertransformer` model. Connection set-up and readiness checks are retried with
    backoff; a generation request is never re-sent.
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
        """`tokenizer`: the model's HF directory (tokenise here) or None (text goes to the ensemble).
        `timeout` bounds each generation in seconds (None: wait forever). `connect_retries` extra
        attempts, `retry_delay` seconds apart and doubling, are made to reach a ready server. The
        task table is read again when older than `task_table_ttl` seconds (None: read once)."""
        super().__init__(url, tokenizer, timeout, connect_retries, retry_delay, task_table_ttl)
        self._grpc = grpcclient.InferenceServerClient(self.url)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the gRPC channel."""
        self._grpc.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- server state ------------------------------------------------------------------------
    def _retrying(self, model: str, probe: Callable[[], T]) -> T:
        delay = self.retry_delay
        for attempt in range(self.connect_retries + 1):
            try:
                return probe()
            except InferenceServerException as exc:
                if not is_connection_failure(exc) or attempt == self.connect_retries:
                    raise translate(exc, self.url, model, PROBE_TIMEOUT_S) from None
            time.sleep(delay)  # backoff before reconnecting; only probes are ever retried
            delay *= 2
        raise AssertionError("unreachable")

    def _wait_ready(self, model: str) -> None:
        delay = self.retry_delay
        for attempt in range(self.connect_retries + 1):
            if self._retrying(
                model, lambda: self._grpc.is_model_ready(model, client_timeout=PROBE_TIMEOUT_S)
            ):
                return
            if attempt < self.connect_retries:
                time.sleep(delay)  # the model may still be loading
                delay *= 2
        raise ModelNotReadyError(self.url, model)

    def _load_info(self, model: str) -> ModelInfo:
        self._wait_ready(model)
        config = self._retrying(
            model, lambda: self._grpc.get_model_config(model, as_json=True, client_timeout=PROBE_TIMEOUT_S)
        )
        return ModelInfo.from_config(config)

    def model_info(self, refresh: bool = False) -> ModelInfo:
        """The `fastertransformer` model's config (task table, decoupled or not), cached."""
        if self._info_is_stale(refresh) or self._model_info is None:
            return self._store_info(self._load_info(protocol.FT_MODEL))
        return self._model_info

    def _ensemble(self) -> ModelInfo | None:
        if not self._ensemble_checked:
            ready = self._retrying(
                protocol.ENSEMBLE_MODEL,
                lambda: self._grpc.is_model_ready(protocol.ENSEMBLE_MODEL, client_timeout=PROBE_TIMEOUT_S),
            )
            self._ensemble_info = self._load_info(protocol.ENSEMBLE_MODEL) if ready else None
            self._ensemble_checked = True
        return self._ensemble_info

    def tasks(self, refresh: bool = False) -> list[TaskInfo]:
        """The tasks the server serves (id, name, prompt length), read from its model config."""
        return list(self.model_info(refresh).tasks)

    def _resolve(
        self,
        prompts: Sequence[Prompt],
        tasks: str | Sequence[str | None] | None,
        params: SamplingParams,
        stop: Sequence[Stop] | None,
    ) -> tuple[ModelInfo, Plan]:
        info = self.model_info()
        if not self._known(info, tasks):
            info = self.model_info(refresh=True)  # the server may have been restarted with new tasks
        ensemble = self._ensemble() if self._needs_ensemble(prompts) else None
        return info, self._plan(info, ensemble, prompts, tasks, params, stop)

    # -- generation --------------------------------------------------------------------------
    def generate(
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
        """Continue one prompt (text or token ids) with task `task` (None: the base model).

        Greedy by default (FT: top_k = top_p = 0). `stop` holds strings or token-id sequences;
        generation ends right after one of them.
        """
        completions = self.generate_batch(
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

    def generate_batch(
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
        """Continue many prompts in one request, each with its own task (`tasks[i]` for
        `prompts[i]`, or one name for all); sampling settings as in `generate`.

        FT has no id for "no task", so base-model rows (task None) go in a request of their own.
        """
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
        try:
            return self._run_plan(*self._resolve(prompts, tasks, params, stop))
        except TaskTableChangedError:
            # refused before anything ran: read the task table again and resend once
            self.model_info(refresh=True)
            return self._run_plan(*self._resolve(prompts, tasks, params, stop))

    def _run_plan(self, info: ModelInfo, plan: Plan) -> list[Completion]:
        results: dict[int, Completion] = {}
        for request in plan.requests():
            collector = Collector(plan, request)
            if info.decoupled:  # the ensemble streams too when its fastertransformer step does
                for outputs in self._stream_outputs(plan.info, request):
                    collector.add(outputs)
            else:
                collector.add(self._infer(plan.info, request))
            results.update(collector.completions())
        return [results[i] for i in range(len(plan.rows))]

    def stream(
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
    ) -> Iterator[StreamChunk]:
        """Yield the new tokens (and text) of one prompt as the server produces them.

        Needs a decoupled model (`ftprefix serve --streaming`); the last chunk carries the
        finish reason. Concatenated, the chunks' token ids equal `generate(...).token_ids`.
        """
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
        for attempt in (1, 2):
            info, plan = self._resolve([prompt], task, params, stop)
            self._check_streamable(info, plan)
            responses = self._stream_outputs(info, plan.requests()[0])
            try:
                first = next(responses, None)
                break
            except TaskTableChangedError:
                if attempt == 2:
                    raise
                self.model_info(refresh=True)  # refused before anything ran: resend once
        maker = ChunkMaker(plan)
        outputs = first
        while outputs is not None:
            chunk = maker.update(outputs[protocol.OUTPUT_IDS], outputs[protocol.SEQUENCE_LENGTH])
            if chunk is not None:
                yield chunk
            outputs = next(responses, None)
        closing = maker.close()
        if closing is not None:
            yield closing

    # -- transport ---------------------------------------------------------------------------
    def _infer(self, info: ModelInfo, request: Request) -> dict[str, np.ndarray]:
        outputs = [grpcclient.InferRequestedOutput(name) for name in self._outputs(info)]
        try:
            result = self._grpc.infer(
                info.name,
                infer_inputs(request.arrays),
                outputs=outputs,
                client_timeout=self.timeout,
                parameters=request.parameters,
            )
        except InferenceServerException as exc:
            raise translate(exc, self.url, info.name, self.timeout) from None
        return {o.name(): result.as_numpy(o.name()) for o in outputs}

    def _stream_outputs(self, info: ModelInfo, request: Request) -> Iterator[dict[str, np.ndarray]]:
        """The outputs of each response of a decoupled model, until the last."""
        responses: queue.Queue[tuple[grpcclient.InferResult | None, InferenceServerException | None]]
        responses = queue.Queue()
        names = self._outputs(info)
        # tritonclient allows one stream per client object: a private one keeps threads apart
        stream_client = grpcclient.InferenceServerClient(self.url)
        try:
            stream_client.start_stream(
                callback=lambda result, error: responses.put((result, error)), stream_timeout=self.timeout
            )
            stream_client.async_stream_infer(
                info.name,
                infer_inputs(request.arrays),
                outputs=[grpcclient.InferRequestedOutput(n) for n in names],
                enable_empty_final_response=True,
                parameters=request.parameters,
            )
            while True:
                try:
                    result, error = responses.get(timeout=self.timeout)
                except queue.Empty:
                    raise RequestTimeoutError(self.url, self.timeout) from None
                if error is not None:
                    raise translate(error, self.url, info.name, self.timeout)
                assert result is not None
                outputs = {name: result.as_numpy(name) for name in names}
                if all(value is not None for value in outputs.values()):  # not the empty final one
                    yield outputs
                if _is_final(result):
                    return
        except InferenceServerException as exc:
            raise translate(exc, self.url, info.name, self.timeout) from None
        finally:
            stream_client.stop_stream(cancel_requests=True)
            stream_client.close()
