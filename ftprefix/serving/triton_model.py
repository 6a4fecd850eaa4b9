"""The CPU twin of the FasterTransformer backend: a Triton python-backend model running ftprefix.engine.

Loaded only inside Triton's python backend stub (it imports `triton_python_backend_utils`). It is
a thin adapter: decode FT's tensors, run the engine once per (dynamically batched) set of requests,
split the rows back per request and encode them in FT's shapes and dtypes. A bad request gets its
own Triton error; the others in the batch are still served.

Streaming (decoupled model) mirrors libfastertransformer.cc: at every generation step each request
receives a response with the full `output_ids` buffer [batch, 1, max_input_len + max_output_len]
(input followed by the tokens so far, the rest end_id) and `sequence_length` so far; after the last
step a final response carries the complete result and the COMPLETE_FINAL flag.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import triton_python_backend_utils as pb_utils

from ftprefix import protocol
from ftprefix.engine import Engine
from ftprefix.engine.api import GenerationRequest, GenerationResult
from ftprefix.errors import UserError
from ftprefix.serving import ft_tensors


@dataclass
class _Pending:
    """One Triton request decoded into engine rows."""

    request: object
    rows: list[GenerationRequest]
    padded_input_ids: np.ndarray  # [batch, max_input_len] as sent: FT echoes it in output_ids


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.engine = Engine.load(params["model_checkpoint_path"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.end_id = int(self.engine.config.end_id)

    # -- decoding / validation -----------------------------------------------------------------

    def _decode(self, request: object) -> _Pending:
        inputs = {}
        for t in protocol.FT_INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, t.name)
            if tensor is not None:
                inputs[t.name] = tensor.as_numpy()
        rows = ft_tensors.requests_from_tensors(inputs)
        # checked per request so that one bad request cannot fail the others it is batched with
        self._check_task_names(request, rows)
        self.engine.validate(rows)
        ids = inputs[protocol.INPUT_IDS]
        return _Pending(request, rows, ids.reshape(ids.shape[0], -1))

    def _check_task_names(self, request: object, rows: Sequence[GenerationRequest]) -> None:
        """Refuse ids that no longer name the tasks the client meant (see protocol.TASK_NAMES_PARAMETER)."""
        params = json.loads(request.parameters() or "{}")  # type: ignore[attr-defined]
        if protocol.TASK_NAMES_PARAMETER not in params:
            return
        names = json.loads(params[protocol.TASK_NAMES_PARAMETER])
        if len(names) != len(rows):
            raise ValueError(f"{protocol.TASK_NAMES_PARAMETER} names {len(names)} tasks for {len(rows)} rows")
        tasks = self.engine.config.tasks
        for i, (row, name) in enumerate(zip(rows, names, strict=True)):
            if row.task_id is None or name is None:
                continue
            now = tasks.name_of(row.task_id) or "no task"
            if now != name:
                raise ValueError(
                    f"{protocol.TASK_TABLE_CHANGED}: row {i} sends task id {row.task_id} for {name!r}, "
                    f"but id {row.task_id} is now {now!r}; read the task table again and resend"
                )

    # -- non-streaming -------------------------------------------------------------------------

    def _generate(self, pending: Sequence[_Pending]) -> list[list[GenerationResult] | Exception]:
        """Run the engine once over all rows; if that fails, run each request alone so one bad
        request (e.g. too long for the model) only fails itself."""
        all_rows = [row for p in pending for row in p.rows]
        try:
            results = self.engine.generate(all_rows)
        except Exception:
            if len(pending) == 1:
                return [self._generate_one(pending[0])]
            return [self._generate_one(p) for p in pending]
        out: list[list[GenerationResult] | Exception] = []
        start = 0
        for p in pending:
            out.append(results[start : start + len(p.rows)])
            start += len(p.rows)
        return out

    def _generate_one(self, p: _Pending) -> list[GenerationResult] | Exception:
        try:
            return self.engine.generate(p.rows)
        except Exception as exc:
            return exc

    def _response(self, p: _Pending, results: Sequence[GenerationResult]) -> object:
        tensors = ft_tensors.tensors_from_results(p.rows, results, p.padded_input_ids, self.end_id)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in tensors.items()])

    def execute(self, requests: list) -> list | None:
        if self.decoupled:
            for request in requests:
                self._stream(request)
            return None
        responses: list = [None] * len(requests)
        pending: list[_Pending] = []
        slots: list[int] = []
        for i, request in enumerate(requests):
            try:
                pending.append(self._decode(request))
                slots.append(i)
            except Exception as exc:
                responses[i] = _error_response(exc)
        if pending:
            for i, p, outcome in zip(slots, pending, self._generate(pending), strict=True):
                responses[i] = _error_response(outcome) if isinstance(outcome, Exception) else self._response(
                    p, outcome
                )
        return responses

    # -- streaming (decoupled) -----------------------------------------------------------------

    def _stream(self, request: object) -> None:
        sender = request.get_response_sender()  # type: ignore[attr-defined]
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            p = self._decode(request)
            generated: list[list[int]] = [[] for _ in p.rows]
            for step in self.engine.stream(p.rows):
                for b, new_ids in enumerate(step):
                    generated[b].extend(int(t) for t in new_ids)
                partial = [ft_tensors.partial_result(r, g) for r, g in zip(p.rows, generated, strict=True)]
                sender.send(self._response(p, partial))
            done = [ft_tensors.partial_result(r, g) for r, g in zip(p.rows, generated, strict=True)]
            sender.send(self._response(p, done), flags=final)
        except Exception as exc:
            sender.send(_error_response(exc), flags=final)


def _error_response(exc: Exception) -> object:
    if isinstance(exc, (ValueError, UserError)):  # BadRequest; the engine's unknown task / too long input
        message = str(exc)
    else:  # a bug: still answer the client, naming the exception type
        message = f"internal error: {type(exc).__name__}: {exc}"
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

