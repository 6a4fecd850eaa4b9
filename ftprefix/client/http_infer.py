"""Unary inference over Triton's HTTP/1.1 endpoint, for `AsyncClient(http_url=...)`.

The KServe v2 `POST /v2/models/{model}/infer` with Triton's binary tensor extension: a JSON header
(`Inference-Header-Content-Length` bytes) followed by each tensor's raw bytes, in both directions
(triton-inference-server/server, docs/protocol/extension_binary_data.md). The connections are
plain asyncio streams kept alive in a pool, one request at a time each, so a response wakes the
event loop directly. grpc.aio hands every response from its own threads to the loop, which on
the 2-core machine costs up to 1.5 times the CPU per call, most where calls come one at a time
(benchmarks/client.py). Requests answered once go this way; a decoupled model's streams use the
same connections through Triton's generate extension (`http_stream`).

Failures become the `InferenceServerException`s the gRPC path raises, with the gRPC status name
Triton's HTTP status stands for (its http_server.cc maps them one to one; older servers answer
every error with 400), so `failures.translate` classifies both alike.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Sequence
from typing import TypeVar
from urllib.parse import quote

import numpy as np
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from ftprefix.client.wire import tensor_bytes, tensor_from_bytes, triton_datatype

_STATUS_OF_HTTP = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}
_MODEL_MISSING = ("unknown model", "is not found", "is not ready")  # Triton's 400 for a missing model
_HEAD_LIMIT = 64 * 1024  # a response's status line and headers
_JSON = json.JSONEncoder(separators=(",", ":"))
_STARTS: dict[tuple[object, ...], bytes] = {}  # encode_request's headers by what decides them
_STARTS_KEPT = 1024  # prompt lengths x batch sizes x tasks in use; past that, start again
_timeout = getattr(asyncio, "timeout", None)
T = TypeVar("T")
# what a read of a connection raises when the server closes it, resets it or answers garbage
READ_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)
# A connection idle this long is closed. A stopping Triton waits for every open HTTP connection
# before it unloads its models ("Found 1 HTTP service connections" in its log, once a second), and
# serves kept-alive ones meanwhile, with no sign of stopping: held open, an idle pool would keep it
# waiting out its whole exit timeout (and then exit without unloading), while a Docker or
# Kubernetes grace period runs out. As httpx's keepalive_expiry (5 s), shorter.
KEEPALIVE_S = 2.0


def encode_request(
    host: str,
    model: str,
    arrays: dict[str, np.ndarray],
    outputs: Sequence[str],
    parameters: dict[str, str] | None,
) -> bytes:
    """The whole HTTP request: headers, the JSON header, then each input's bytes in order."""
    blobs = [tensor_bytes(array, triton_datatype(array.dtype)) for array in arrays.values()]
    # Requests of one shape share their headers, byte for byte: built once, they cost a dict lookup
    # instead of a JSON document of some 20 inputs per request.
    key = (
        host,
        model,
        tuple(outputs),
        tuple(parameters.items()) if parameters else None,
        tuple((name, array.dtype, array.shape) for name, array in arrays.items()),
        tuple(map(len, blobs)),
    )
    start = _STARTS.get(key)
    if start is None:
        if len(_STARTS) >= _STARTS_KEPT:
            _STARTS.clear()
        start = _STARTS[key] = _request_start(host, model, arrays, blobs, outputs, parameters)
    return b"".join((start, *blobs))


def _request_start(
    host: str,
    model: str,
    arrays: dict[str, np.ndarray],
    blobs: list[bytes],
    outputs: Sequence[str],
    parameters: dict[str, str] | None,
) -> bytes:
    """A request's HTTP headers and JSON header, up to its inputs' bytes."""
    inputs = [
        {
            "name": name,
            "shape": list(array.shape),
            "datatype": triton_datatype(array.dtype),
            "parameters": {"binary_data_size": len(data)},
        }
        for (name, array), data in zip(arrays.items(), blobs, strict=True)
    ]
    header: dict[str, object] = {
        "inputs": inputs,
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
    }
    if parameters:
        header["parameters"] = dict(parameters)
    head = _JSON.encode(header).encode()
    size = len(head) + sum(map(len, blobs))
    start = (
        f"POST /v2/models/{quote(model, safe='')}/infer HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(head)}\r\nContent-Length: {size}\r\n\r\n"
    )
    return start.encode("ascii") + head


def http_error(status: int, body: bytes) -> InferenceServerException:
    """Triton's error answer (`{"error": MESSAGE}`) with the gRPC status name its HTTP status stands for."""
    try:
        message = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode("utf-8", "replace") or f"HTTP {status}"
    code = _STATUS_OF_HTTP.get(status, "UNKNOWN")
    if code == "INVALID_ARGUMENT" and any(hint in message.lower() for hint in _MODEL_MISSING):
        code = "NOT_FOUND"
    return InferenceServerException(msg=message, status=code)


def decode_response(
    status: int, header_size: int | None, body: bytes, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """The named outputs of a 200 response as numpy arrays (missing ones left out); an error
    response raises InferenceServerException with the matching gRPC status name."""
    if status != 200:
        raise http_error(status, body)
    size = len(body) if header_size is None else header_size
    try:
        header = json.loads(body[:size])
        arrays: dict[str, np.ndarray] = {}
        offset = size
        for output in header.get("outputs", []):
            shape, datatype = tuple(output["shape"]), output["datatype"]
            nbytes = (output.get("parameters") or {}).get("binary_data_size")
            if nbytes is None:  # sent as JSON (a server that ignored binary_data)
                array = np.array(output["data"], dtype=triton_to_np_dtype(datatype)).reshape(shape)
            else:
                array = tensor_from_bytes(body[offset : offset + nbytes], datatype, shape)
                offset += nbytes
            if output["name"] in names:
                arrays[output["name"]] = array
    except (ValueError, KeyError, TypeError) as exc:
        raise InferenceServerException(
            msg=f"unreadable inference response: {exc}", status="INTERNAL"
        ) from None
    return arrays


async def within(seconds: float | None, work: Awaitable[T]) -> T:
    """`await work`, raising Triton's DEADLINE_EXCEEDED after `seconds` (None: no limit)."""
    try:
        if seconds is None:
            return await work
        if _timeout is not None:  # Python 3.11+: a deadline on this task, no task of its own
            async with _timeout(seconds):
                return await work
        return await asyncio.wait_for(work, seconds)
    except asyncio.TimeoutError:
        raise deadline_exceeded() from None


class _Unanswered(ConnectionError):
    """The connection failed before any byte of a response came."""


class Connection:
    """One keep-alive connection: a request written, its response read, in turn."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.used = False  # answered before: the server may have closed it since (then resend once)
        self.idle_since = 0.0  # the loop's time when it was put back in the pool

    async def read_body(self, headers: dict[str, str]) -> bytes:
        """The whole body of the response whose `headers` were read (a body that ends with the
        connection marks it `connection: close`)."""
        if "content-length" in headers:
            return await self.reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            pieces = []
            while (piece := await self.chunk()) is not None:
                pieces.append(piece)
            return b"".join(pieces)
        headers["connection"] = "close"
        return await self.reader.read()

    async def send(self, request: bytes) -> tuple[int, dict[str, str]]:
        """Write `request`, read the response's status and headers (names in lower case; an
        HTTP/1.0 answer reads as `connection: close`)."""
        try:
            self.writer.write(request)
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            raise _Unanswered("the server closed the connection before answering") from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise _Unanswered(str(exc) or type(exc).__name__) from None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise InferenceServerException(
                msg=f"not an HTTP response: {lines[0][:80]!r}", status="UNAVAILABLE"
            )
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        if parts[0] == "HTTP/1.0":
            headers["connection"] = "close"
        return int(parts[1]), headers

    async def chunk(self) -> bytes | None:
        """The next piece of a chunked body; None after the last."""
        size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await self.reader.readuntil(b"\r\n")  # no trailers from Triton: the final CRLF
            return None
        piece = await self.reader.readexactly(size + 2)
        return piece[:-2]

    def close(self) -> None:
        self.writer.close()


class HttpInferPool:
    """Keep-alive connections to one Triton HTTP endpoint; as many open as requests in flight."""

    def __init__(self, url: str, *, max_idle: int = 256, keepalive_s: float = KEEPALIVE_S) -> None:
        host, _, port = url.rpartition(":")
        self.url, self.host, self.port = url, host.strip("[]"), int(port)
        self.max_idle, self.keepalive_s = max_idle, keepalive_s
        self._idle: list[Connection] = []  # the longest idle first: a request takes the last
        self._sweep: asyncio.TimerHandle | None = None  # closes the first when it expires

    async def infer(
        self,
        model: str,
        arrays: dict[str, np.ndarray],
        outputs: Sequence[str],
        parameters: dict[str, str] | None,
        timeout: float | None,
    ) -> dict[str, np.ndarray]:
        """Run one request; raises InferenceServerException (status: a gRPC status name)."""
        request = encode_request(self.url, model, arrays, outputs, parameters)
        status, header_size, body = await within(timeout, self._send(request))
        return decode_response(status, header_size, body, outputs)

    async def _send(self, request: bytes) -> tuple[int, int | None, bytes]:
        connection, status, headers = await self.open(request)
        try:
            body = await connection.read_body(headers)
        except READ_ERRORS as exc:
            connection.close()
            raise connection_failed(exc) from None
        except BaseException:  # cancelled or a bug: the connection's state is unknown
            connection.close()
            raise
        self.release(connection, keep=keeps_alive(headers))
        json_size = headers.get("inference-header-content-length")
        return status, int(json_size) if json_size and json_size.isdigit() else None, body

    async def open(self, request: bytes) -> tuple[Connection, int, dict[str, str]]:
        """Send `request` and read its status and headers; the body is the caller's to read, and
        the connection its to `release` (or close). A kept-alive connection the server closed as
        the request went out is replaced and the request sent again, once: Triton has seen none
        of it, so sending it again is safe."""
        while True:
            connection = self._idle.pop() if self._idle else await self._connect()
            if connection.reader.at_eof():  # closed by the server while idle
                connection.close()
                continue
            try:
                status, headers = await connection.send(request)
            except READ_ERRORS as exc:
                connection.close()
                if connection.used and isinstance(exc, _Unanswered):
                    continue
                raise connection_failed(exc) from None
            except BaseException:  # cancelled or a bug: the connection's state is unknown
                connection.close()
                raise
            return connection, status, headers

    def release(self, connection: Connection, *, keep: bool) -> None:
        """A connection whose response was read to its end: kept for the next request if `keep`."""
        if keep and len(self._idle) < self.max_idle:
            connection.used = True
            loop = asyncio.get_running_loop()
            connection.idle_since = loop.time()
            self._idle.append(connection)
            if self._sweep is None:
                self._sweep = loop.call_later(self.keepalive_s, self._close_expired)
        else:
            connection.close()

    def _close_expired(self) -> None:
        """Close the connections idle for keepalive_s; come back when the next one expires."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        expired = loop.time() - self.keepalive_s
        count = 0
        while count < len(self._idle) and self._idle[count].idle_since <= expired:
            self._idle[count].close()
            count += 1
        del self._idle[:count]
        if self._idle:
            self._sweep = loop.call_at(self._idle[0].idle_since + self.keepalive_s, self._close_expired)

    async def server_version(self, timeout: float | None) -> str:
        """The version Triton reports in its server metadata (`GET /v2`)."""
        request = f"GET /v2 HTTP/1.1\r\nHost: {self.url}\r\n\r\n".encode("ascii")
        status, _, body = await within(timeout, self._send(request))
        if status != 200:
            raise http_error(status, body)
        try:
            return str(json.loads(body)["version"])
        except (ValueError, KeyError, TypeError):
            raise InferenceServerException(msg="unreadable server metadata", status="UNAVAILABLE") from None

    async def _connect(self) -> Connection:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=_HEAD_LIMIT)
        except OSError as exc:
            raise InferenceServerException(
                msg=f"failed to connect: {_describe(exc)}", status="UNAVAILABLE"
            ) from None
        return Connection(reader, writer)

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def keeps_alive(headers: dict[str, str]) -> bool:
    """Whether the server keeps the connection open after the response with these headers."""
    return headers.get("connection", "").lower() != "close"


def connection_failed(exc: BaseException) -> InferenceServerException:
    return InferenceServerException(msg=f"the connection failed: {_describe(exc)}", status="UNAVAILABLE")


def deadline_exceeded() -> InferenceServerException:
    """What gRPC raises for a call past its deadline."""
    return InferenceServerException(msg="Deadline Exceeded", status="DEADLINE_EXCEEDED")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the server closed it before the whole response came"
    return str(exc) or type(exc).__name__
