"""Map tritonclient's gRPC exceptions onto the client's actionable errors."""

from __future__ import annotations

import grpc
from tritonclient.utils import InferenceServerException

from ftprefix import protocol
from ftprefix.client.errors import (
    FtprefixClientError,
    InferenceError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerUnavailableError,
    TaskTableChangedError,
)

_MODEL_MISSING_HINTS = ("unknown model", "is not ready", "not found", "no version", "unavailable model")


def is_connection_failure(exc: InferenceServerException) -> bool:
    """True when no server answered: the only failure worth a retry with backoff."""
    message = (exc.message() or "").lower()
    return "UNAVAILABLE" in str(exc.status()) and not any(h in message for h in _MODEL_MISSING_HINTS)


def translate(
    exc: InferenceServerException, url: str, model: str, timeout: float | None
) -> FtprefixClientError:
    status = str(exc.status() or "")
    message = exc.message() or str(exc)
    if "DEADLINE_EXCEEDED" in status or "deadline exceeded" in message.lower():
        return RequestTimeoutError(url, timeout)
    if is_connection_failure(exc):
        return ServerUnavailableError(url, message.splitlines()[0] if message else "")
    if any(h in message.lower() for h in _MODEL_MISSING_HINTS):
        return ModelNotReadyError(url, model, message)
    if protocol.TASK_TABLE_CHANGED in message:
        return TaskTableChangedError(f"the server at {url} refused the request to {model!r}: {message}")
    return InferenceError(f"the server at {url} rejected the request to {model!r}: {message}")


def from_rpc_error(error: grpc.RpcError) -> InferenceServerException:
    """The tritonclient exception for a raw gRPC error (the aio stream iterator lets these through)."""
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    return InferenceServerException(msg=str(details), status=str(code))
