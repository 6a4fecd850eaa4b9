"""A server-sent event stream that always ends the same way, and notices a client that left.

Once its 200 is out, a stream cannot change its status: whatever fails after that (Triton, the
client library, a bug) ends it with an OpenAI error event, then `data: [DONE]`, never with a bare
close; so does a server that stops while the stream outlives its stop timeout (a 503 event). A
client that disconnects does not stop the generation: neither FT nor the CPU twin can stop one
they started, so Triton computes it to its end whatever the client does. The stream is read on
to its last response, its events going nowhere, and only then are its places at Triton given
back: given back at the disconnect, they let a client that starts streams and leaves pile
generations onto Triton past --max-in-flight and ahead of every other tenant. A stream that outlives
its timeout (--request-timeout) ends at once with a 504 event and `[DONE]`, and its generation is
read on to its end the same way (see deadline.py). A comment line goes
out when nothing else has for PING_S seconds, so proxies keep an idle stream open while a
non-streaming server computes the whole answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import Any

from starlette.responses import Response

from ftprefix.gateway.answers import DONE, event
from ftprefix.gateway.deadline import expired
from ftprefix.gateway.errors import ApiError, shutting_down

PING_S = 15.0
PING = b": ping\n\n"


class EventStream(Response):
    """An ASGI response sending `events` (each one whole SSE message, as bytes). `failure` turns
    an exception raised after the start into the ApiError the error event carries; `on_close`
    runs once, when the events have ended, whatever happened (the request's place at Triton, its
    limits, its metrics); `timeout`: seconds the stream may take from its start to its end, after
    which request `request_id` gets the 504 event while its events are read on to their end."""

    def __init__(
        self,
        events: AsyncIterator[bytes],
        *,
        failure: Callable[[BaseException], ApiError],
        on_close: Callable[[bool], None],
        headers: list[tuple[str, str]] | None = None,
        timeout: float | None = None,
        request_id: str = "",
    ) -> None:
        self.events = events
        self.failure = failure
        self.on_close = on_close
        self.timeout = timeout
        self.request_id = request_id
        self.raw_headers = [  # starlette's Response attribute: the route adds the request id
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # nginx: pass each event on as it comes
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers or []),
        ]
        self.failed: ApiError | None = None
        self.status_code = 200
        self.background = None  # starlette's Response attributes, which frameworks read

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        loop = asyncio.get_running_loop()
        last_sent = [loop.time()]
        deadline = None if self.timeout is None else loop.time() + self.timeout
        ended = [False]  # the response is over (timed out): events read from then on go nowhere

        async def pump() -> None:
            try:
                async for data in self.events:
                    if not ended[0]:
                        await send({"type": "http.response.body", "body": data, "more_body": True})
                        last_sent[0] = loop.time()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # after the 200 every failure ends the stream the same way
                if ended[0]:
                    return
                self.failed = self.failure(exc)
                error = event(self.failed.body())
                await send({"type": "http.response.body", "body": error + DONE, "more_body": True})
            if not ended[0]:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        producer = asyncio.ensure_future(pump())
        gone = asyncio.ensure_future(receive())
        completed = stopped = False
        try:
            while True:
                wait = PING_S if deadline is None else max(0.0, min(PING_S, deadline - loop.time()))
                done, _ = await asyncio.wait(
                    {producer, gone}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if producer in done:
                    producer.result()
                    completed = True
                    return
                if gone in done and gone.result().get("type") == "http.disconnect":
                    await producer  # Triton's generation goes on: its places with it (see above)
                    return
                if gone in done:  # another message than a disconnect (none is expected): wait on
                    gone = asyncio.ensure_future(receive())
                elif deadline is not None and loop.time() >= deadline:
                    # the caller's answer ends now; Triton's generation goes on, its places with it
                    ended[0] = True
                    self.failed = expired(self.request_id, self.timeout or 0.0)
                    await send({"type": "http.response.body", "body": event(self.failed.body()) + DONE})
                    await producer
                    return
                elif loop.time() - last_sent[0] >= PING_S:
                    await send({"type": "http.response.body", "body": PING, "more_body": True})
                    last_sent[0] = loop.time()
        except asyncio.CancelledError:
            # only the server cancels a response (a client that leaves is `gone`): it stops, and
            # the stream outlived its stop timeout. It still ends as every failing stream does,
            # sent at once: nothing else is awaited, as the server's loop ends soon after
            stopped = True
            if not producer.done() and not ended[0]:
                producer.cancel()  # nothing of it comes after [DONE]
                self.failed = shutting_down()
                with contextlib.suppress(Exception):  # a client already gone
                    await send({"type": "http.response.body", "body": event(self.failed.body()) + DONE})
        finally:
            for task in (producer, gone):
                if not task.done():
                    task.cancel()
            try:
                if not stopped:
                    await asyncio.gather(producer, return_exceptions=True)
            finally:
                self.on_close(completed and self.failed is None)
