"""The CPU twin of the FasterTransformer backend: a Triton python-backend model running ftprefix.engine.

Loaded only inside Triton's python backend stub (it imports `triton_python_backend_utils`). A thin
adapter: decode FT's tensors per request, run every request Triton merged into this execution as
ONE engine batch, and answer each request with its slice of FT's output tensors (ft_batch.py).
A bad request gets its own INVALID_ARG error; the others are still served.

Streaming (decoupled model) follows the backend's `streaming_callback` and GptNeoX::forward: after
every generation step each request gets a response laid out like the final one, except for the
step that ends generation (FT breaks out of its loop before the callback); then the final response
carries the complete result and the COMPLETE_FINAL flag.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from ftprefix import protocol
from ftprefix.engine import Engine
from ftprefix.errors import UserError
from ftprefix.serving import stub_args
from ftprefix.serving.ft_batch import FtBatch, FtRequest, decode_request


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = stub_args.parameters(args)
        threads = int(params.get(stub_args.ENGINE_THREADS_PARAMETER, "1"))
        with contextlib.suppress(RuntimeError):  # set already in this process (a model reload)
            torch.set_num_interop_threads(1)  # one batch at a time per instance: no inter-op pool
        shared = params.get(stub_args.SHARED_WEIGHTS_PARAMETER)
        with stub_args.errors_shown():
            self.engine = Engine.load(
                stub_args.stub_path(params["model_checkpoint_path"]),
                threads=threads,
                shared_weights=stub_args.stub_path(shared) if shared else None,
            )
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self._streams_lock: int | None = None
        if self.decoupled:
            with contextlib.suppress(OSError):  # unwritable: a stop waits for Triton's own exit
                path = stub_args.stub_path(args["model_repository"]) / stub_args.STREAMS_LOCK
                self._streams_lock = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    # -- decoding / validation -----------------------------------------------------------------

    def _decode(self, request: object) -> FtRequest:
        inputs = {}
        for t in protocol.FT_INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, t.name)
            if tensor is not None:
                inputs[t.name] = tensor.as_numpy()
        decoded = decode_request(inputs)
        # checked per request so that one bad request cannot fail the others it is batched with
        self._check_retired(decoded)
        self._check_task_names(request, decoded)
        self.engine.validate(self._batch([decoded]).engine_rows())
        return decoded

    def _check_retired(self, decoded: FtRequest) -> None:
        """A removed task's id is no task: FT would serve its zero placeholder; the twin says so."""
        tasks = self.engine.config.tasks
        for i, row in enumerate(decoded.rows):
            slot = tasks.slot(row.task_id) if row.task_id is not None else None
            if slot is not None and slot.retired:
                was = f"task {slot.removed!r}" if slot.removed else "its task"
                raise ValueError(
                    f"{protocol.TASK_TABLE_CHANGED}: row {i} sends task id {row.task_id}, whose task was "
                    f"removed ({was}); that id names no task any more: read the task table again"
                )

    def _check_task_names(self, request: object, decoded: FtRequest) -> None:
        """Refuse ids that no longer name the tasks the client meant (see protocol.TASK_NAMES_PARAMETER)."""
        params = json.loads(request.parameters() or "{}")  # type: ignore[attr-defined]
        if protocol.TASK_NAMES_PARAMETER not in params:
            return
        names = json.loads(params[protocol.TASK_NAMES_PARAMETER])
        if len(names) != len(decoded.rows):
            raise ValueError(
                f"{protocol.TASK_NAMES_PARAMETER} names {len(names)} tasks for {len(decoded.rows)} rows"
            )
        tasks = self.engine.config.tasks
        for i, (row, name) in enumerate(zip(decoded.rows, names, strict=True)):
            if row.task_id is None or name is None:
                continue
            now = tasks.name_of(row.task_id) or "no task"
            if now != name:
                raise ValueError(
                    f"{protocol.TASK_TABLE_CHANGED}: row {i} sends task id {row.task_id} for {name!r}, "
                    f"but id {row.task_id} is now {now!r}; read the task table again and resend"
                )

    def _batch(self, requests: Sequence[FtRequest]) -> FtBatch:
        return FtBatch(requests, self.engine.config.end_id)

    # -- execution -------------------------------------------------------------------------------

    def execute(self, requests: list) -> list | None:
        responses: list = [None] * len(requests)
        decoded: list[tuple[int, FtRequest]] = []
        for i, request in enumerate(requests):
            try:
                decoded.append((i, self._decode(request)))
            except Exception as exc:
                responses[i] = _error_response(exc, on_stream=self.decoupled)
        if self.decoupled:
            with self._streaming():
                for i, response in enumerate(responses):
                    if response is not None:
                        requests[i].get_response_sender().send(response, flags=_FINAL)
                if decoded:
                    self._stream([requests[i] for i, _ in decoded], [d for _, d in decoded])
            return None
        for group in self._groups([d for _, d in decoded]):
            indices = [decoded[j][0] for j in group]
            batch = self._batch([decoded[j][1] for j in group])
            try:
                results = self.engine.generate(batch.engine_rows())
            except Exception as exc:
                for i in indices:
                    responses[i] = _error_response(exc, on_stream=False)
                continue
            tensors = batch.responses([r.generated_ids for r in results], results)
            for i, t in zip(indices, tensors, strict=True):
                responses[i] = _response(t)
        return responses

    @contextlib.contextmanager
    def _streaming(self) -> Iterator[None]:
        """Hold the streams lock (shared: every instance at once) until the last answer is sent.
        One execute at a time per instance (process), so one lock per process serves."""
        if self._streams_lock is None:
            yield
            return
        fcntl.flock(self._streams_lock, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(self._streams_lock, fcntl.LOCK_UN)

    def _groups(self, decoded: Sequence[FtRequest]) -> list[list[int]]:
        """All requests as one batch, as FT runs them; each alone if that batch is too long for the
        engine (rows below the merged maximum get one token more than alone). A lone request was
        validated as such by `_decode`."""
        if len(decoded) > 1:
            try:
                self.engine.validate(self._batch(decoded).engine_rows())
            except ValueError:
                return [[j] for j in range(len(decoded))]
        return [list(range(len(decoded)))] if decoded else []

    def _stream(self, requests: Sequence[object], decoded: Sequence[FtRequest]) -> None:
        for group in self._groups(decoded):
            senders = [requests[j].get_response_sender() for j in group]  # type: ignore[attr-defined]
            batch = self._batch([decoded[j] for j in group])
            generated: list[list[int]] = [[] for _ in batch.rows]
            try:
                for step in self.engine.stream(batch.engine_rows()):
                    for tokens, new in zip(generated, step.new_tokens, strict=True):
                        tokens.extend(new)
                    if all(step.finished):
                        break  # FT's loop ends before the callback of its last step
                    for sender, tensors in zip(senders, batch.responses(generated), strict=True):
                        sender.send(_response(tensors))
                for sender, tensors in zip(senders, batch.responses(generated), strict=True):
                    sender.send(_response(tensors), flags=_FINAL)
            except Exception as exc:
                for sender in senders:
                    sender.send(_error_response(exc, on_stream=True), flags=_FINAL)


_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _response(tensors: dict[str, np.ndarray]) -> object:
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in tensors.items()])


def _error_response(exc: Exception, on_stream: bool) -> object:
    if isinstance(exc, (ValueError, UserError)):  # BadRequest; the engine's unknown task / too long input
        mark = protocol.REFUSED_ON_STREAM if on_stream else ""
        error = pb_utils.TritonError(f"{mark}{exc}", pb_utils.TritonError.INVALID_ARG)
    else:  # a bug: still answer the client, naming the exception type
        error = pb_utils.TritonError(
            f"internal error: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL
        )
    return pb_utils.InferenceResponse(output_tensors=[], error=error)
