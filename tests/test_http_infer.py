"""The HTTP transport's connection handling, against a socket server that misbehaves on purpose:
a kept-alive connection closed as the next request goes out (the server restarted, or dropped
an idle connection) is resent once on a new connection; a response cut in the middle is not.

The answers are written by hand in the format of Triton's binary tensor extension
(triton-inference-server/server, docs/protocol/extension_binary_data.md). Equality with Hugging
Face through a real Triton server is in test_client_server.py."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from ftprefix.client.http_infer import HttpInferPool

IDS = np.array([[[5, 6, 7]]], dtype=np.int32)


def _answer(chunked: bool = False) -> bytes:
    header = json.dumps(
        {
            "model_name": "fastertransformer",
            "outputs": [
                {
                    "name": "output_ids",
                    "datatype": "INT32",
                    "shape": [1, 1, 3],
                    "parameters": {"binary_data_size": 12},
                },
                {"name": "sequence_length", "datatype": "INT32", "shape": [1, 1], "data": [3]},
            ],
        }
    ).encode()
    body = header + IDS.tobytes()
    head = f"HTTP/1.1 200 OK\r\nInference-Header-Content-Length: {len(header)}\r\n"
    if chunked:
        middle = len(body) // 2
        pieces = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:middle], body[middle:]))
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + pieces + b"0\r\n\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    size = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(size)


class Script:
    """A server whose n-th connection does `plans[n]`: a list of what to do with each request on
    it: "answer", "chunked" (answer in chunks), "close" (close without answering), "half" (half
    an answer, then close)."""

    def __init__(self, plans: list[list[str]]) -> None:
        self.plans, self.connections, self.requests = plans, 0, []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        plan = self.plans[self.connections]
        self.connections += 1
        for step in plan:
            try:
                self.requests.append(await _read_request(reader))
            except asyncio.IncompleteReadError:
                break
            if step in ("answer", "chunked"):
                writer.write(_answer(chunked=step == "chunked"))
                await writer.drain()
            elif step == "half":
                writer.write(_answer()[:60])
                await writer.drain()
                break
            else:
                break
        writer.close()


async def _with_server(script: Script, calls: int) -> list[dict | Exception]:
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = HttpInferPool(f"127.0.0.1:{port}")
    results: list[dict | Exception] = []
    arrays = {"input_ids": np.array([[1, 2]], dtype=np.uint32)}
    try:
        for _ in range(calls):
            try:
                results.append(
                    await pool.infer("fastertransformer", arrays, ["output_ids", "sequence_length"], None, 10)
                )
            except InferenceServerException as exc:
                results.append(exc)
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()
    return results


def test_a_kept_alive_connection_closed_under_a_request_is_resent_once_on_a_new_one() -> None:
    script = Script([["answer", "close"], ["chunked"]])
    first, second = asyncio.run(_with_server(script, 2))
    for result in (first, second):
        assert isinstance(result, dict)
        np.testing.assert_array_equal(result["output_ids"], IDS)
        np.testing.assert_array_equal(result["sequence_length"], np.array([[3]]))
    assert script.connections == 2 and len(script.requests) == 3
    assert script.requests[1] == script.requests[2]  # the same request, sent again whole
    header_size = int(script.requests[0].split(b"Inference-Header-Content-Length: ")[1].split(b"\r\n")[0])
    body = script.requests[0].split(b"\r\n\r\n", 1)[1]
    sent = json.loads(body[:header_size])
    assert sent["inputs"] == [
        {"name": "input_ids", "shape": [1, 2], "datatype": "UINT32", "parameters": {"binary_data_size": 8}}
    ]
    assert body[header_size:] == np.array([1, 2], dtype=np.uint32).tobytes()


@pytest.mark.parametrize(
    ("plans", "why"),
    [
        ([["half"]], "before the whole response came"),  # an answer cut short: never resent
        ([["close"]], "closed the connection before answering"),  # a new connection: not resent
    ],
)
def test_a_connection_that_fails_otherwise_is_unavailable_and_not_resent(plans, why: str) -> None:
    script = Script(plans)
    (result,) = asyncio.run(_with_server(script, 1))
    assert isinstance(result, InferenceServerException)
    assert result.status() == "UNAVAILABLE" and why in result.message()
    assert script.connections == 1 and len(script.requests) == 1
