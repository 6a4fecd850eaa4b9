"""Streams over Triton's HTTP endpoint, for `AsyncClient(http_url=...)` with a decoupled model.

Triton's generate extension (triton-inference-server/server, docs/protocol/extension_generate.md):
`POST /v2/models/{model}/generate_stream` takes a JSON object whose members are the model's input
tensors by name (flat JSON arrays; Triton gives each the shape the model config implies, batch 1)
and answers every response of the decoupled model as one server-sent event, `data: {...}`, whose
members are its output tensors, flattened. An error before the first response is the answer's
HTTP status with `{"error": MESSAGE}`; one after it is an event of that shape.

On a plain HTTP/1.1 connection every response wakes the event loop directly; through grpc.aio each
one is first received on gRPC's own threads and handed over, which costs a streaming process 1.2
to 1.6 times the CPU per response, 1 to 32 streams at once (benchmarks/client.py). Values keep
every bit: integers are JSON integers, and a float32 written as the shortest decimal of its double
reads back as the same float.

The extension is provisional; it is used with the servers it was checked against (Triton 2.51 and
newer, the CPU server's), while older ones (the GPU image's Triton 23.05 has no generate endpoint)
stream over gRPC.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from urllib.parse import quote

import numpy as np
from tritonclient.utils import InferenceServerException

from ftprefix import protocol
from ftprefix.client.http_infer import (
    READ_ERRORS,
    Connection,
    HttpInferPool,
    connection_failed,
    deadline_exceeded,
    http_error,
    keeps_alive,
    within,
)

OLDEST_VERSION = (2, 51)  # the first Triton whose generate_stream these streams were checked against
_OUTPUT_DTYPES = {t.name: t.dtype for t in protocol.FT_OUTPUTS}
_PER_STEP = frozenset({protocol.OUTPUT_IDS, protocol.OUTPUT_LOG_PROBS})  # [batch, beam, steps]
_JSON = json.JSONEncoder(separators=(",", ":"))
# An unsigned output as Triton writes it, an array or a number: at most 9 digits each, so that
# every value fits uint32 and the fast reading below can neither wrap nor stop short.
_UNSIGNED_NUMBER = re.compile(rb"(\d{1,9})(?=[,}])")
_DIGITS_AS_D = bytes.maketrans(b"0123456789", b"dddddddddd")
_UNSIGNED_MEMBERS = {  # name -> how its member starts in an event, its dtype
    t.name: (f'"{t.name}":'.encode(), t.dtype) for t in protocol.FT_OUTPUTS if t.dtype.kind == "u"
}
DRAIN_S = 1.0  # how long a stopped stream's connection waits for the end of its body
_DRAINING: set[asyncio.Task[None]] = set()  # drains run unreferenced otherwise


def streams_over_http(version: str) -> bool:
    """Whether a Triton reporting `version` (its server metadata's, e.g. "2.51.0") streams here."""
    numbers = []
    for part in version.split(".")[:2]:
        if not part.isdigit():
            return False
        numbers.append(int(part))
    return tuple(numbers) >= OLDEST_VERSION


def one_row(arrays: dict[str, np.ndarray]) -> bool:
    """Whether a request is one row: the generate extension gives every input a batch of 1, so a
    request of several rows (a batch of prompts on a decoupled server) streams over gRPC."""
    return all(array.shape[:1] == (1,) for array in arrays.values())


def encode_generate(
    host: str, model: str, arrays: dict[str, np.ndarray], parameters: dict[str, str] | None
) -> bytes:
    """The whole `generate_stream` request of one row: every input as a flat JSON array."""
    body: dict[str, object] = {name: array.ravel().tolist() for name, array in arrays.items()}
    if parameters:
        body["parameters"] = dict(parameters)
    data = _JSON.encode(body).encode()
    start = (
        f"POST /v2/models/{quote(model, safe='')}/generate_stream HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return start.encode("ascii") + data


def decode_event(data: bytes, names: Sequence[str], beams: int) -> dict[str, np.ndarray]:
    """The named outputs of one `data:` event in the shapes the gRPC path gives: [1, beams, ...]."""
    flat = _unsigned_outputs(data, names)
    if flat is None:
        try:
            message = json.loads(data)
        except ValueError as exc:
            raise InferenceServerException(msg=f"unreadable stream event: {exc}", status="INTERNAL") from None
        if "error" in message:  # after the 200: the server's error for this request
            raise InferenceServerException(msg=str(message["error"]))
        flat = {
            name: np.asarray(message[name], dtype=_OUTPUT_DTYPES.get(name))
            for name in names
            if name in message
        }
    return {
        name: values.reshape(1, beams, -1) if name in _PER_STEP else values.reshape(1, beams)
        for name, values in flat.items()
    }


def _unsigned_outputs(data: bytes, names: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The named outputs read from the event's bytes where each is an unsigned integer output
    (output_ids, sequence_length: what a stream without log probs asks for) written as Triton
    writes it; None for any other event, which json reads. Every event carries output_ids as long
    as prompt + max_tokens and output_log_probs as long as max_tokens, so reading the whole JSON
    at every token costs more the longer the answer: here only the named members are read, each
    with a check of its bytes and numpy's own parser. A member name cannot occur inside a JSON
    string unescaped, so finding `"name":` finds the member."""
    arrays = {}
    for name in names:
        member = _UNSIGNED_MEMBERS.get(name)
        if member is None:
            return None
        key, dtype = member
        at = data.find(key)
        if at < 0:
            return None
        at += len(key)
        if data[at : at + 1] == b"[":
            close = data.find(b"]", at)
            text = data[at + 1 : close] if close >= 0 else None
            if text is None or not _unsigned_list(text):
                return None
        else:
            match = _UNSIGNED_NUMBER.match(data, at)
            if match is None:
                return None
            text = match.group(1)
        arrays[name] = np.fromstring(text, dtype=dtype, sep=",")
    return arrays


def _unsigned_list(text: bytes) -> bool:
    """Whether `text` is numbers of 1 to 9 digits joined by commas: what a pattern says, checked
    with byte operations instead, which an event's output_ids as long as prompt + max_tokens
    makes worth it (5 against 37 us for 1,024 ids)."""
    return (
        text[:1].isdigit()
        and text[-1:].isdigit()
        and not text.translate(None, b"0123456789,")
        and b",," not in text
        and b"dddddddddd" not in text.translate(_DIGITS_AS_D)
    )


class HttpStream:
    """One decoupled request over `generate_stream`: `next()` gives each response's outputs, then
    None after the last. The request goes out at the first `next()`; `timeout` bounds the whole
    stream, as a gRPC stream's deadline does."""

    def __init__(
        self,
        pool: HttpInferPool,
        model: str,
        arrays: dict[str, np.ndarray],
        outputs: Sequence[str],
        parameters: dict[str, str] | None,
        timeout: float | None,
    ) -> None:
        self.pool, self.names = pool, outputs
        self.request = encode_generate(pool.url, model, arrays, parameters)
        beams = arrays.get(protocol.BEAM_WIDTH)
        self.beams = int(beams.flat[0]) if beams is not None else 1
        self.timeout = timeout
        self._connection = None
        self._keep = False
        self._buffer = b""
        self._ended = self._expired = False
        self._timer: asyncio.TimerHandle | None = None
        self.drain: asyncio.Task[None] | None = None  # after close(): the connection's way back

    async def next(self) -> dict[str, np.ndarray] | None:
        """Raises InferenceServerException (status: a gRPC status name, or none for an error the
        server sent inside the stream)."""
        try:
            while True:
                end = self._buffer.find(b"\n\n")
                if end >= 0:
                    event, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
                    if event.startswith(b"data: "):
                        return decode_event(event[6:], self.names, self.beams)
                    continue  # a comment or an empty line
                if self._ended:
                    return None
                await self._read()
        except InferenceServerException:
            self.close()
            raise
        except READ_ERRORS as exc:
            self.close()
            if self._expired:
                raise deadline_exceeded() from None
            raise connection_failed(exc) from None
        except BaseException:
            self.close()
            raise

    async def _read(self) -> None:
        if self._connection is None:
            await self._open()
            return
        piece = await self._connection.chunk()
        if piece is None:  # the stream's end: the connection can take the next request
            self._ended = True
            connection, self._connection = self._connection, None
            self._cancel_timer()
            self.pool.release(connection, keep=self._keep)
        else:
            self._buffer += piece

    async def _open(self) -> None:
        if self.timeout is not None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self._expire)
        # until its head comes the request is the pool's: the deadline is awaited around it; after
        # that the timer closes the connection under the pending read
        connection, status, headers = await within(self.timeout, self.pool.open(self.request))
        self._connection = connection
        if status != 200:  # refused before its first response: the body holds the error
            body = await connection.read_body(headers)
            self.close()
            if body.startswith(b"data: "):
                body = body[6:].split(b"\n\n", 1)[0]
            raise http_error(status, body)
        if headers.get("transfer-encoding", "").lower() != "chunked":
            self.close()
            raise InferenceServerException(msg="the stream's answer is not chunked", status="INTERNAL")
        self._keep = keeps_alive(headers)

    def _expire(self) -> None:
        self._expired = True
        if self._connection is not None:
            self._connection.writer.transport.abort()  # the pending read fails at once

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Stop the stream. One stopped right after a response (its reader saw the last one) keeps
        its connection: the end of the body, which follows the last response at once, is read in
        the background and the connection goes back to the pool; one that stopped with more to
        come, or past its deadline, is closed (Triton finishes the request on its own)."""
        self._cancel_timer()
        connection, self._connection = self._connection, None
        buffered, self._buffer = self._buffer, b""
        self._ended = True
        if connection is None:
            return
        if buffered or not self._keep or self._expired:
            connection.close()
            return
        try:
            self.drain = asyncio.get_running_loop().create_task(self._drain(connection))
        except RuntimeError:  # no loop runs any more
            connection.close()
            return
        _DRAINING.add(self.drain)
        self.drain.add_done_callback(_DRAINING.discard)

    async def _drain(self, connection: Connection) -> None:
        try:
            piece = await within(DRAIN_S, connection.chunk())
        except Exception:  # the deadline, or the connection failed: nothing to keep
            connection.close()
            return
        except BaseException:
            connection.close()
            raise
        if piece is None:
            self.pool.release(connection, keep=True)
        else:  # another response: the stream had not ended
            connection.close()
