"""Everything `Client` and `AsyncClient` share: settings, caches and the logic of every call.

Each call is written once, as a generator (a "flow") that yields the operations it needs done
(`IsReady`, `GetConfig`, `Infer`, `OpenStream`, `NextResponse`, `CloseStream`, `Sleep`, `Gather`,
`Emit`) and receives their results. The sync and async clients only drive flows: they perform
each operation with their own transport (tritonclient.grpc or tritonclient.grpc.aio) and send the
result back, or throw the client error it raised. So retries with backoff, ensemble detection,
task-table resolution and the resend after a task-table change exist in one place.
"""

from __future__ import annotations

import numbers
import os
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from tritonclient.utils import InferenceServerException

from ftprefix import protocol
from ftprefix.client.errors import (
    FtprefixClientError,
    InvalidRequestError,
    ModelNotReadyError,
    ServerUnavailableError,
    StreamingNotSupportedError,
    TaskTableChangedError,
)
from ftprefix.client.failures import translate
from ftprefix.client.model_info import ModelInfo
from ftprefix.client.plan import ChunkMaker, Collector, Plan, Prompts, Request, Tasks
from ftprefix.client.types import Completion, GenerationParams, Prompt
from ftprefix.client.wire import response_arrays
from ftprefix.text import Tokenizer, TokenizerError, load_tokenizer

T = TypeVar("T")

DEFAULT_URL = "localhost:8001"
DEFAULT_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 5.0
# A wait this long is waiting forever. gRPC counts a deadline in int64 nanoseconds since 1970, so
# one past 2262 (a timeout of 1e10 s) overflowed into DEADLINE_EXCEEDED at once, and a stream's
# `queue.get` raises OverflowError past threading.TIMEOUT_MAX (about 9.2e9 s).
FOREVER_S = 1e9  # about 31 years
TASK_TABLE_TTL_S = 5.0
# how often a client whose target is a DNS name (Kubernetes' headless Service of the Triton pods)
# opens a new channel, so a new lookup: gRPC looks a name up again only when a connection fails,
# so replicas added by scaling up would get nothing until then
RESOLVE_EVERY_S = 30.0
# After the server refused stale task ids: how long to wait for it to publish its new table.
TABLE_CHANGE_WAIT_S = 10.0
MAX_RESENDS = 5


# -- operations a flow asks its driver to perform --------------------------------------------


@dataclass(frozen=True)
class IsReady:
    model: str  # -> bool

    @property
    def asked(self) -> str:  # what a check that went unanswered asked (RequestTimeoutError)
        return f"whether {self.model!r} is ready"


@dataclass(frozen=True)
class GetConfig:
    model: str  # -> the model config as JSON (dict)

    @property
    def asked(self) -> str:
        return f"for the configuration of {self.model!r}"


@dataclass(frozen=True)
class Infer:
    model: str
    request: Request
    outputs: list[str]  # -> {output name: array}


@dataclass(frozen=True)
class OpenStream:
    model: str
    request: Request
    outputs: list[str]  # -> a handle for NextResponse / CloseStream


@dataclass(frozen=True)
class NextResponse:
    handle: Any  # -> {output name: array}, or None once the stream has ended


@dataclass(frozen=True)
class CloseStream:
    handle: Any  # -> None


@dataclass(frozen=True)
class Sleep:
    seconds: float  # -> None


@dataclass(frozen=True)
class Gather:
    flows: list[Generator[Any, Any, Any]]  # -> their results in order, run concurrently where possible


@dataclass(frozen=True)
class Emit:
    item: Any  # a stream chunk for the caller; -> None


Op = IsReady | GetConfig | Infer | OpenStream | NextResponse | CloseStream | Sleep | Gather | Emit
Flow = Generator[Op, Any, T]


class FlowRunner:
    """Steps a flow for a driver: `next_op()` resumes it with the last result (`value`) or error
    (`error`) and returns its next operation, or None once it has returned (`result`)."""

    def __init__(self, flow: Flow[Any]) -> None:
        self.flow = flow
        self.value: Any = None
        self.error: BaseException | None = None
        self.result: Any = None

    def next_op(self) -> Op | None:
        value, error, self.value, self.error = self.value, self.error, None, None
        try:
            return self.flow.throw(error) if error is not None else self.flow.send(value)
        except StopIteration as stop:
            self.result = stop.value
            return None


def normalize_url(url: str) -> str:
    """`host:port` as gRPC wants it; a `grpc://` or `grpcs://` scheme is accepted and dropped (the
    latter's TLS: `uses_tls`)."""
    url = url.strip()
    for scheme in ("grpc://", "grpcs://"):
        if url.startswith(scheme):
            url = url[len(scheme) :]
    if url.startswith(("http://", "https://")):
        raise FtprefixClientError(
            f"{url} is an HTTP URL; the client speaks gRPC: pass host:port of the gRPC endpoint "
            "(e.g. localhost:8001)"
        )
    if not url or ":" not in url:
        raise FtprefixClientError(f"server URL {url!r} needs a port: pass host:port, e.g. localhost:8001")
    return url.rstrip("/")


def uses_tls(url: str) -> bool:
    """`grpcs://host:port`: a TLS channel, the server's certificate checked against the system's
    roots, or those of the file GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names (gRPC's own setting), e.g.
    a cluster's private CA. A TLS endpoint reached without it (and a plain one with it) fails as
    unreachable: gRPC cannot tell which side is wrong."""
    return url.strip().startswith("grpcs://")


def looks_up_a_name(url: str) -> bool:
    """Whether `url` is a name that DNS may answer differently later (replicas added, moved)."""
    return url.startswith("dns:")


def normalize_http_url(url: str) -> str:
    """`host:port` of Triton's HTTP endpoint; an `http://` scheme is accepted and dropped."""
    text = url.strip().removeprefix("http://").rstrip("/")
    if text.startswith("https://"):
        raise FtprefixClientError(
            f"{url}: the HTTP path speaks plain HTTP; pass host:port, e.g. localhost:8000"
        )
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535 or "/" in text:
        raise FtprefixClientError(f"HTTP URL {url!r} needs host:port, e.g. localhost:8000")
    return text


def request_timeout(timeout: float | None) -> float | None:
    """`timeout` as the client keeps it: seconds more than 0, or None to wait forever (which `inf`,
    and any wait of FOREVER_S or more, is too); InvalidRequestError for anything else."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0:
        raise InvalidRequestError(
            f"timeout must be a number of seconds more than 0, or None to wait forever; got {timeout!r}"
        )
    return None if timeout >= FOREVER_S else float(timeout)


def stream_outputs(
    response: Any, names: Sequence[str], url: str, model: str, timeout: float | None
) -> dict[str, np.ndarray] | None:
    """The outputs of one ModelStreamInfer response, or None for the empty final one; Triton's
    error for the request, sent inside the stream, raised as the client's error."""
    if response.error_message:
        raise translate(InferenceServerException(msg=response.error_message), url, model, timeout)
    outputs = response_arrays(response.infer_response, names)
    return outputs if len(outputs) == len(names) else None


class ClientBase:
    """Settings, caches and flows common to `Client` and `AsyncClient`."""

    probe_timeout = PROBE_TIMEOUT_S  # the limit of the client's own checks, and what their errors say

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        tokenizer: str | os.PathLike[str] | Tokenizer | None = None,
        newline_token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        connect_retries: int = 3,
        retry_delay: float = 0.2,
        task_table_ttl: float | None = TASK_TABLE_TTL_S,
        resolve_every: float | None = RESOLVE_EVERY_S,
    ) -> None:
        """`tokenizer`: the model's HF directory (tokenise here) or None (text goes to the ensemble).
        `newline_token`: rinna's convention, e.g. "<NL>": `\\n` in prompts and words is sent as that
        token and the token comes back as `\\n` (with the ensemble, the server's `--newline-token`
        does this). `timeout` bounds each generation in seconds (None or inf: wait forever).
        `connect_retries` extra attempts, `retry_delay` seconds apart and doubling, are made to reach
        a ready server. The task table is read again when older than `task_table_ttl` seconds
        (None: read once). The gRPC channel opens on first use. `resolve_every`: for a `dns:`
        target, the seconds after which the next call opens a new channel, which looks the name up
        again (None: never); calls on the old channel finish there, and the connections it had
        carry over."""
        self.url = normalize_url(url)
        self.tls = uses_tls(url)
        if resolve_every is not None and not resolve_every >= 0:
            raise ValueError(f"resolve_every must be 0 or more seconds, or None; got {resolve_every}")
        self.resolve_every = resolve_every if looks_up_a_name(self.url) else None
        self._renew_at = float("inf")
        self.tokenizer = self._tokenizer(tokenizer, newline_token)
        self.timeout = request_timeout(timeout)
        self.connect_retries = connect_retries
        self.retry_delay = retry_delay
        self.task_table_ttl = task_table_ttl
        self._model_info: ModelInfo | None = None
        self._model_info_read_at = 0.0
        self._ensemble_info: ModelInfo | None = None
        self._ensemble_checked = False
        # probes in flight, shared by concurrent calls of the async client
        self._probes: dict[IsReady | GetConfig, Any] = {}

    def _failed(self, exc: InferenceServerException, op: IsReady | GetConfig | Infer) -> FtprefixClientError:
        """The error for a call of `op` that failed: a request's within this client's timeout, a
        check's (is the model ready, its configuration) within its own probe_timeout."""
        if isinstance(op, Infer):
            return translate(exc, self.url, op.model, self.timeout)
        return translate(exc, self.url, op.model, self.probe_timeout, asked=op.asked)

    def _channel_due(self) -> bool:
        """Whether the next call opens a new channel: a new lookup of the target's name."""
        return time.monotonic() >= self._renew_at

    def _channel_opened(self) -> None:
        if self.resolve_every is not None:
            self._renew_at = time.monotonic() + self.resolve_every

    @staticmethod
    def _tokenizer(
        tokenizer: str | os.PathLike[str] | Tokenizer | None, newline_token: str | None
    ) -> Tokenizer | None:
        if tokenizer is None:
            if newline_token is not None:
                raise FtprefixClientError(
                    "newline_token needs tokenizer=HF_MODEL_DIR; text sent to the server's ensemble uses the "
                    "server's --newline-token"
                )
            return None
        if isinstance(tokenizer, Tokenizer):
            if newline_token is not None and newline_token != tokenizer.newline_token:
                raise FtprefixClientError(
                    "pass newline_token to load_tokenizer, or a tokenizer directory here"
                )
            return tokenizer
        try:
            return load_tokenizer(tokenizer, newline_token=newline_token)
        except TokenizerError as exc:
            raise FtprefixClientError(str(exc)) from None

    # -- server state ------------------------------------------------------------------------

    def _backoff(self) -> Iterator[float | None]:
        """A delay before each retry, doubling; None when no retry is left."""
        delay = self.retry_delay
        for _ in range(self.connect_retries):
            yield delay
            delay *= 2
        yield None

    def _probe(self, op: IsReady | GetConfig) -> Flow[Any]:
        """`op`, retried with backoff while no server answers (the only failure worth a retry)."""
        for delay in self._backoff():
            try:
                return (yield op)
            except ServerUnavailableError:
                if delay is None:
                    raise
            yield Sleep(delay)
        raise AssertionError("unreachable")

    def _load_info(self, model: str) -> Flow[ModelInfo]:
        for delay in self._backoff():
            if (yield from self._probe(IsReady(model))):
                break
            if delay is None:
                raise ModelNotReadyError(self.url, model)
            yield Sleep(delay)  # the model may still be loading
        return ModelInfo.from_config((yield from self._probe(GetConfig(model))))

    def _info_is_stale(self, refresh: bool) -> bool:
        # Ids never move, but tasks come and go (and `tasks compact` renumbers): the table is read
        # again after `task_table_ttl` seconds.
        if self._model_info is None or refresh:
            return True
        ttl = self.task_table_ttl
        return ttl is not None and time.monotonic() - self._model_info_read_at > ttl

    def _model_info_flow(self, refresh: bool = False) -> Flow[ModelInfo]:
        if self._info_is_stale(refresh) or self._model_info is None:
            info = yield from self._load_info(protocol.FT_MODEL)
            self._model_info, self._model_info_read_at = info, time.monotonic()
        return self._model_info

    def _ensemble_flow(self) -> Flow[ModelInfo | None]:
        if not self._ensemble_checked:
            ready = yield from self._probe(IsReady(protocol.ENSEMBLE_MODEL))
            self._ensemble_info = (yield from self._load_info(protocol.ENSEMBLE_MODEL)) if ready else None
            self._ensemble_checked = True
        return self._ensemble_info

    # -- planning ----------------------------------------------------------------------------

    def _resolve(self, prompts: Prompts, tasks: Tasks, params: GenerationParams, refresh: bool) -> Flow[Plan]:
        info = yield from self._model_info_flow(refresh)
        names = [tasks] if tasks is None or isinstance(tasks, str) else list(tasks)
        if not refresh and not all(info.serves(n) for n in names):
            info = yield from self._model_info_flow(refresh=True)  # the server may serve new tasks now
        needs_ensemble = self.tokenizer is None and prompts.has_text
        ensemble = (yield from self._ensemble_flow()) if needs_ensemble else None
        return Plan.build(prompts, tasks, params, info, self.tokenizer, ensemble)

    def _resending(
        self,
        prompts: Sequence[Prompt],
        tasks: Tasks,
        params: GenerationParams,
        send: Callable[[Plan], Flow[T]],
    ) -> Flow[T]:
        """`send(plan)` (a flow); when the server refuses stale task ids, read its table again and
        resend, waiting with backoff until it publishes a table that differs from the refused one.
        Nothing ran for a refused request, so resending is safe. If a task is gone from the new
        table, the plan refuses it (UnknownTaskError)."""
        checked = Prompts.of(prompts)  # a prompt of the wrong kind is refused before connecting
        refused: TaskTableChangedError | None = None
        stale = None
        resends = 0
        deadline = 0.0
        delay = self.retry_delay
        while True:
            plan = yield from self._resolve(checked, tasks, params, refresh=refused is not None)
            if refused is not None and plan.info.tasks == stale:
                if time.monotonic() >= deadline:
                    raise refused  # the server never published its new table
                yield Sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            try:
                return (yield from send(plan))
            except TaskTableChangedError as exc:
                resends += 1
                if resends > MAX_RESENDS:
                    raise
                refused, stale = exc, plan.info.tasks
                deadline = time.monotonic() + TABLE_CHANGE_WAIT_S

    # -- calls ---------------------------------------------------------------------------------

    def _request_flow(self, plan: Plan, request: Request) -> Flow[list[tuple[int, Completion]]]:
        """One request's completions; a decoupled model's last response carries the whole result."""
        collector = Collector(plan, request)
        if not plan.info.decoupled:
            return collector.completions((yield Infer(plan.info.name, request, plan.outputs())))
        last = None
        handle = yield OpenStream(plan.info.name, request, plan.outputs())
        try:
            while (response := (yield NextResponse(handle))) is not None:
                last = response
        except Exception:
            yield CloseStream(handle)
            raise
        yield CloseStream(handle)
        if last is None:
            raise FtprefixClientError(f"the server at {self.url} ended the stream without an answer")
        return collector.completions(last)

    def _generate_flow(
        self, prompts: Sequence[Prompt], tasks: Tasks, params: GenerationParams
    ) -> Flow[list[Completion]]:
        def send(plan: Plan) -> Flow[list[Completion]]:
            requests = plan.requests()
            if len(requests) == 1:  # the common case: no concurrent flows to start and wait for
                answers = [(yield from self._request_flow(plan, requests[0]))]
            else:
                answers = yield Gather([self._request_flow(plan, r) for r in requests])
            results = {row: completion for answer in answers for row, completion in answer}
            return [results[i] for i in range(len(plan.rows))]

        return (yield from self._resending(prompts, tasks, params, send))

    def _stream_flow(self, prompt: Prompt, task: str | None, params: GenerationParams) -> Flow[None]:
        """Yields `Emit(StreamChunk)` as the server streams; resends only before the first response."""

        def open_stream(plan: Plan) -> Flow[tuple[Plan, Any, Any]]:
            if plan.text_prompts is not None:
                raise StreamingNotSupportedError(
                    "streaming goes to the fastertransformer model: pass tokenizer=HF_MODEL_DIR (--tokenizer)"
                )
            if not plan.info.decoupled:
                raise StreamingNotSupportedError(
                    f"model {plan.info.name!r} is not decoupled, so it answers once per request: use "
                    "generate(), or start the server with streaming (ftprefix serve --streaming)"
                )
            handle = yield OpenStream(plan.info.name, plan.requests()[0], plan.outputs())
            try:
                first = yield NextResponse(handle)
            except Exception:
                yield CloseStream(handle)
                raise
            return plan, handle, first

        # No yield in a `finally` here: a caller that stops iterating closes the flow, and the
        # driver then closes whatever stream is still open.
        plan, handle, response = yield from self._resending([prompt], task, params, open_stream)
        try:
            maker = ChunkMaker(plan)
            last = response
            while response is not None:
                last = response
                chunk = maker.update(response, final=False)
                if chunk is not None:
                    yield Emit(chunk)
                if maker.finished:
                    break  # a stop string in the text ended it before FT's stop words did
                response = yield NextResponse(handle)
            # Only the last response tells an end_id that ended the row from the end_id fill.
            chunk = maker.update(last, final=True) if last is not None else None
            if chunk is not None:
                yield Emit(chunk)
            if not maker.finished:
                raise FtprefixClientError(f"the server at {self.url} ended the stream before the answer did")
        except Exception:
            yield CloseStream(handle)
            raise
        yield CloseStream(handle)
