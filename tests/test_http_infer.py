"""The HTTP transport's connection handling, against a socket server that misbehaves on purpose:
a kept-alive connection closed as the next request goes out (the server restarted, or dropped
an idle connection) is resent once on a new connection; a response cut in the middle is not.
Streams (generate_stream) keep their connection only when they ended, and fail as gRPC's do.

The answers are written by hand in the format of Triton's binary tensor extension
(triton-inference-server/server, docs/protocol/extension_binary_data.md). Equality with Hugging
Face through a real Triton server is in test_client_server.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

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


@contextlib.asynccontextmanager
async def _pool_at(handle) -> AsyncIterator[HttpInferPool]:
    """A pool of connections to a server that answers with `handle`, both closed afterwards."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    pool = HttpInferPool(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        yield pool
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()


async def _with_server(script: Script, calls: int) -> list[dict | Exception]:
    results: list[dict | Exception] = []
    arrays = {"input_ids": np.array([[1, 2]], dtype=np.uint32)}
    async with _pool_at(script.handle) as pool:
        for _ in range(calls):
            try:
                results.append(
                    await pool.infer("fastertransformer", arrays, ["output_ids", "sequence_length"], None, 10)
                )
            except InferenceServerException as exc:
                results.append(exc)
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


def test_an_idle_connection_is_closed_after_the_keepalive_and_the_next_request_opens_another() -> None:
    """A stopping Triton waits for its open connections before unloading: an idle pool lets go."""
    closed = asyncio.Event()
    script = Script([["answer", "answer", "answer"], ["answer"]])  # the first would answer a third

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = script.connections == 0
        await script.handle(reader, writer)
        if first:  # the server saw the first connection end: the client closed it
            closed.set()

    async def run() -> list[dict]:
        arrays = {"input_ids": np.array([[1, 2]], dtype=np.uint32)}
        outputs = ["output_ids", "sequence_length"]
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        pool = HttpInferPool(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", keepalive_s=0.2)
        try:
            answers = [await pool.infer("fastertransformer", arrays, outputs, None, 10) for _ in range(2)]
            await asyncio.wait_for(closed.wait(), timeout=30)  # idle: closed by the pool
            answers.append(await pool.infer("fastertransformer", arrays, outputs, None, 10))
            return answers
        finally:
            await pool.close()
            server.close()
            await server.wait_closed()

    answers = asyncio.run(run())
    assert len(answers) == 3 and all(isinstance(a, dict) for a in answers)
    # two requests back to back shared one connection; the third, after the idle one closed, a new one
    assert script.connections == 2 and len(script.requests) == 3


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


# -- streams: Triton's generate_stream (server-sent events) ---------------------------------------

EVENTS = [
    {"model_name": "fastertransformer", "output_ids": [1, 2, 9], "sequence_length": 3, "cum_log_probs": -0.5},
    {
        "model_name": "fastertransformer",
        "output_ids": [1, 2, 9, 4],
        "sequence_length": 4,
        "cum_log_probs": -1.25,
    },
]


def _event(body: dict) -> bytes:
    data = b"data: " + json.dumps(body).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


class StreamScript:
    """A generate_stream server whose n-th connection does `plans[n]`, one step per request:
    "all" (every event, then the body's end), "error" (an event, then an error event), "cut" (an
    event, then close), "refuse" (400 with the error as an event), "hang" (an event, then
    nothing until the client goes)."""

    def __init__(self, plans: list[list[str]]) -> None:
        self.plans, self.connections, self.requests = plans, 0, []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        plan = self.plans[self.connections]
        self.connections += 1
        ok = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for step in plan:
            try:
                self.requests.append(await _read_request(reader))
            except asyncio.IncompleteReadError:
                break
            if step == "refuse":
                writer.write(ok.replace(b"200 OK", b"400 Bad Request") + _event({"error": "no such task"}))
                writer.write(b"0\r\n\r\n")
            elif step == "all":
                writer.write(ok + b"".join(map(_event, EVENTS)) + b"0\r\n\r\n")
            else:
                writer.write(ok + _event(EVENTS[0]))
                if step == "error":
                    writer.write(_event({"error": "the model failed"}) + b"0\r\n\r\n")
            await writer.drain()
            if step == "cut":
                break
            if step == "hang":
                await reader.read()  # until the client closes its end
                break
        writer.close()


async def _streams(script: StreamScript, runs: list[int | None], timeout: float = 10) -> list:
    """One stream per entry of `runs`, one after another: read `n` responses and close it (None:
    read it to its end). Each result: the outputs read, or the exception raised."""
    from ftprefix.client.http_stream import HttpStream

    arrays = {"input_ids": np.array([[1, 2]], dtype=np.uint32), "temperature": np.array([[0.7]], np.float32)}
    results: list = []
    async with _pool_at(script.handle) as pool:
        for n in runs:
            stream = HttpStream(
                pool, "fastertransformer", arrays, ["output_ids", "sequence_length"], None, timeout
            )
            got: list = []
            try:
                while (n is None or len(got) < n) and (outputs := await stream.next()) is not None:
                    got.append(outputs)
            except InferenceServerException as exc:
                got.append(exc)
            stream.close()
            if stream.drain is not None:
                await stream.drain  # the connection is back in the pool, or closed
            results.append(got)
    return results


def test_streams_read_to_their_end_or_stopped_after_their_last_response_keep_the_connection() -> None:
    script = StreamScript([["all", "all", "all"]])
    whole, stopped, again = asyncio.run(_streams(script, [None, 2, None]))
    assert script.connections == 1 and len(script.requests) == 3
    for got in (whole, stopped, again):
        assert [r["output_ids"].tolist() for r in got] == [[[e["output_ids"]]] for e in EVENTS]
        assert [r["sequence_length"].tolist() for r in got] == [[[3]], [[4]]]
        assert all(
            r["output_ids"].dtype == np.uint32 and set(r) == {"output_ids", "sequence_length"} for r in got
        )
    head, body = script.requests[0].split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v2/models/fastertransformer/generate_stream HTTP/1.1\r\n")
    sent = json.loads(body)
    assert sent == {"input_ids": [1, 2], "temperature": [float(np.float32(0.7))]}
    assert np.float32(sent["temperature"][0]) == np.float32(0.7)  # every bit of the float32


def test_a_stream_stopped_with_more_to_come_closes_its_connection() -> None:
    script = StreamScript([["all"], ["all"]])
    first, second = asyncio.run(_streams(script, [1, None]))
    assert len(first) == 1 and len(second) == 2
    assert script.connections == 2


@pytest.mark.parametrize(
    ("step", "status", "message"),
    [
        ("error", None, "the model failed"),  # after the 200: an error event
        ("refuse", "INVALID_ARGUMENT", "no such task"),  # before the first response: 400
        ("cut", "UNAVAILABLE", "the connection failed"),
    ],
)
def test_a_failing_stream_raises_what_the_grpc_path_raises(
    step: str, status: str | None, message: str
) -> None:
    script = StreamScript([[step], ["all"]])
    failed, after = asyncio.run(_streams(script, [None, None]))
    error = failed[-1]
    assert isinstance(error, InferenceServerException)
    assert error.status() == status and message in error.message()
    assert len(failed) == (1 if step == "refuse" else 2)  # the first event came before the failure
    assert len(after) == 2 and script.connections == 2  # the failed connection is not used again


def test_a_stream_past_its_deadline_is_deadline_exceeded() -> None:
    script = StreamScript([["hang"]])
    ((first, error),) = asyncio.run(_streams(script, [None], timeout=0.3))
    assert first["sequence_length"].tolist() == [[3]]
    assert isinstance(error, InferenceServerException) and error.status() == "DEADLINE_EXCEEDED"


def _reference_outputs(data: bytes, names: list[str], beams: int) -> dict[str, np.ndarray]:
    """An event read with the standard library's json, in the shapes of the gRPC path."""
    dtypes = {"output_ids": np.uint32, "sequence_length": np.uint32, "cum_log_probs": np.float32}
    dtypes["output_log_probs"] = np.float32
    message = json.loads(data)
    shapes = {"output_ids": (1, beams, -1), "output_log_probs": (1, beams, -1)}
    return {
        name: np.asarray(message[name], dtype=dtypes[name]).reshape(shapes.get(name, (1, beams)))
        for name in names
        if name in message
    }


def _random_events(seed: int) -> list[tuple[bytes, list[str], int]]:
    """Events as Triton writes them and as it might: members in any order, spaces, large values,
    the member names inside strings, log probs asked for or not."""
    rng = np.random.default_rng(seed)
    events = []
    for _ in range(300):
        beams = int(rng.integers(1, 3))
        width = int(rng.integers(0, 40))
        top = int(rng.choice([10, 50_000, 999_999_999, 4_294_967_295]))
        members = {
            "model_name": str(rng.choice(["fastertransformer", 'x "output_ids":[7]', "sequence_length"])),
            "model_version": "1",
            "output_ids": rng.integers(0, top, size=beams * width, endpoint=True).tolist(),
            "sequence_length": rng.integers(0, top, size=beams, endpoint=True).tolist(),
            "cum_log_probs": rng.normal(size=beams).tolist(),
            "output_log_probs": rng.normal(size=beams * width).tolist(),
        }
        if beams == 1 and rng.random() < 0.3:
            members["sequence_length"] = members["sequence_length"][0]  # a number, not an array
        order = list(members)
        rng.shuffle(order)
        spaced = rng.random() < 0.2
        data = json.dumps({k: members[k] for k in order}, separators=(", ", ": ") if spaced else (",", ":"))
        names = ["output_ids", "sequence_length"]
        if rng.random() < 0.2:
            names += ["cum_log_probs", "output_log_probs"]
        events.append((data.encode(), names, beams))
    return events


@pytest.mark.parametrize("seed", range(4))
def test_stream_events_are_read_as_json_reads_them(seed: int) -> None:
    from ftprefix.client.http_stream import decode_event

    for data, names, beams in _random_events(seed):
        got, want = decode_event(data, names, beams), _reference_outputs(data, names, beams)
        assert list(got) == list(want), data
        for name in want:
            assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, data
            assert got[name].tobytes() == want[name].tobytes(), data


def test_an_error_event_naming_an_output_in_its_message_is_the_error() -> None:
    from ftprefix.client.http_stream import decode_event

    data = json.dumps({"error": 'bad "output_ids":[1,2] and "sequence_length":3}'}).encode()
    with pytest.raises(InferenceServerException, match="bad"):
        decode_event(data, ["output_ids", "sequence_length"], 1)
