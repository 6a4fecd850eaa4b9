"""Errors as the OpenAI API answers them, and what the gateway tells its operator instead.

Every error has OpenAI's body, `{"error": {"message", "type", "param", "code"}}`, and every
response a request id (`x-request-id`, the caller's own when it sent a usable one). An API caller
is a tenant: an error it gets names neither the gateway's Triton address nor what the operator
should do about it. Those go to the gateway's log with the request id, where the operator looks.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import uuid
from typing import Any

from ftprefix.client import (
    FtprefixClientError,
    InferenceError,
    InvalidRequestError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerUnavailableError,
    UnknownTaskError,
)
from ftprefix.client.wrong_port import http_port_message

log = logging.getLogger("ftprefix.gateway")
REQUEST_ID_HEADER = "x-request-id"
_USABLE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# gRPC statuses of a request Triton dropped rather than refused: it stopped, restarted or is away
_UNAVAILABLE = {"CANCELLED", "UNAVAILABLE", "ABORTED", "RESOURCE_EXHAUSTED"}
RETRY_AFTER_S = 1


class ApiError(Exception):
    """An error answered with OpenAI's body. `headers` go with it (Retry-After, rate limits);
    `reason` labels a 429 in the metrics."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "",
        headers: list[tuple[str, str]] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or []
        self.reason = reason

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


def bad_param(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


# New request ids: this process's random half, then a counter (32 hex digits, as a uuid4's hex):
# unique without a system call for random bytes on every request.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's x-request-id when it is a usable one, else a new one."""
    for key, value in headers:
        if key == b"x-request-id":
            text = value.decode("latin-1")
            if _USABLE_ID.match(text):
                return text
            break
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def _unavailable(message: str) -> ApiError:
    return ApiError(
        503,
        message,
        code="model_server_unavailable",
        kind="service_unavailable",
        headers=[("retry-after", str(RETRY_AFTER_S))],
    )


def cannot_serve(request: str) -> ApiError:
    """What every request gets while the gateway's tokenizer is another model's: the log says
    which; the caller learns only that this gateway cannot answer, and may try another."""
    return _unavailable(f"this gateway cannot serve the model now (request id {request}); try again later")


def shutting_down() -> ApiError:
    """What a request still running when the gateway's stop timeout ran out gets: retry elsewhere."""
    return ApiError(
        503,
        "the server is shutting down; try again",
        code="server_shutting_down",
        kind="service_unavailable",
        headers=[("retry-after", str(RETRY_AFTER_S))],
    )


def timed_out() -> ApiError:
    """The answer for a generation that outlived --request-timeout."""
    return ApiError(504, "the model server did not answer in time", code="timeout", kind="timeout")


def _detail(exc: FtprefixClientError) -> str:
    return f"{exc} ({exc.status or 'no status'})"


def from_client_error(exc: FtprefixClientError, request: str, *, logged: bool = True) -> ApiError:
    """The answer for a client error: what the caller may know; the whole of it goes to the log
    (unless `logged` is false: the caller logs it its own way)."""
    if isinstance(exc, UnknownTaskError):
        # a task removed meanwhile: say only that it does not exist (no other tenant's names)
        return ApiError(404, f"the model {exc.task!r} does not exist", param="model", code="model_not_found")
    if logged:
        what = "refused it" if isinstance(exc, InvalidRequestError) else "failed"
        log.warning("request %s: the model server %s: %s", request, what, _detail(exc))
    if isinstance(exc, InvalidRequestError):
        if exc.status is None:  # refused before sending: about the request itself, and says so
            return ApiError(400, str(exc), code="invalid_request")
        return ApiError(400, "the model server refused this request", code="invalid_request")
    if isinstance(exc, ServerUnavailableError | ModelNotReadyError):
        return _unavailable("the model server is not available; try again shortly")
    if isinstance(exc, RequestTimeoutError):
        return timed_out()
    if isinstance(exc, InferenceError) and (exc.status or "").removeprefix("StatusCode.") in _UNAVAILABLE:
        return _unavailable("the model server stopped before it answered; try again shortly")
    return ApiError(500, "the model server failed this request", code="model_server_error")


def internal_error(exc: BaseException, request: str) -> ApiError:
    """A bug in the gateway: the traceback to the log, a request id to the caller."""
    log.error("request %s: internal error", request, exc_info=exc)
    return ApiError(500, f"internal error (request id {request})", code="internal_error")


def _say_if_http_port(exc: ServerUnavailableError) -> None:
    message = http_port_message(exc.url, exc.option)
    if message is not None:
        log.warning("health: %s", message)


class ReadinessLog:
    """What the health probes found, logged when it changes: a readiness probe comes every few
    seconds, and a Triton away for an hour would otherwise write the same line a thousand times."""

    def __init__(self) -> None:
        # the kind of failure the last probe found; None while ready. A kind, not the message,
        # which names a connection's last error and so varies from one probe to the next
        self._failure: tuple[type, str | None] | None = None

    def failed(self, exc: FtprefixClientError) -> None:
        kind = (type(exc), exc.status)
        if kind != self._failure:
            log.warning("health: the model server is not ready: %s", _detail(exc))
            self._failure = kind
            if isinstance(exc, ServerUnavailableError):  # an HTTP port given as --url? (off the loop)
                threading.Thread(target=_say_if_http_port, args=(exc,), daemon=True).start()

    def ready(self) -> None:
        if self._failure is not None:
            log.info("health: the model server is ready again")
            self._failure = None
