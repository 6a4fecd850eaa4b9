"""Classify tritonclient's gRPC exceptions into the client's errors, by status code first."""

from __future__ import annotations

import grpc
from tritonclient.utils import InferenceServerException

from ftprefix import protocol
from ftprefix.client.errors import (
    FtprefixClientError,
    InferenceError,
    InvalidRequestError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerUnavailableError,
    TaskTableChangedError,
)

# Triton answers a missing or loading model with NOT_FOUND or UNAVAILABLE and one of these.
_MODEL_MISSING_HINTS = ("unknown model", "is not ready", "not found", "no version", "unavailable model")


def translate(
    exc: InferenceServerException,
    url: str,
    model: str,
    timeout: float | None,
    *,
    option: str = "--url",
    asked: str | None = None,
) -> FtprefixClientError:
    """The client error for `exc`, carrying its status; raise it `from exc` to keep the cause.
    `option`: the command-line option that sets `url` (named when no server answers there).
    `asked`: what the call asked where it was one of the client's own checks, not a request
    (RequestTimeoutError); `timeout` is then the check's."""
    status = str(exc.status() or "") or None
    code = (status or "").removeprefix("StatusCode.")
    message = exc.message() or str(exc)
    if message.startswith(protocol.REFUSED_ON_STREAM):  # the CPU server's refusal on a stream
        message = message.removeprefix(protocol.REFUSED_ON_STREAM)
        if not code:  # a gRPC stream's error has no status of its own
            code, status = "INVALID_ARGUMENT", "StatusCode.INVALID_ARGUMENT"
    model_missing = any(h in message.lower() for h in _MODEL_MISSING_HINTS)
    if code == "DEADLINE_EXCEEDED" or "deadline exceeded" in message.lower():
        return RequestTimeoutError(url, timeout, status=status, asked=asked)
    if code == "NOT_FOUND" or (code == "UNAVAILABLE" and model_missing):
        return ModelNotReadyError(url, model, message, status=status)
    if code == "UNAVAILABLE":
        detail = message.splitlines()[0] if message else ""
        return ServerUnavailableError(url, detail, status=status, option=option)
    if code == "INVALID_ARGUMENT":
        kind = TaskTableChangedError if protocol.TASK_TABLE_CHANGED in message else InvalidRequestError
        return kind(f"the server at {url} refused the request to {model!r}: {message}", status=status)
    return InferenceError(f"the server at {url} failed the request to {model!r}: {message}", status=status)


def from_rpc_error(error: grpc.RpcError) -> InferenceServerException:
    """The tritonclient exception for a raw gRPC error (what AsyncClient's calls raise)."""
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    return InferenceServerException(msg=str(details), status=str(code))
