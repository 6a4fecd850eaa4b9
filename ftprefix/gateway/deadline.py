"""A generation's deadline (--request-timeout), kept by the gateway rather than by the call.

Neither FT nor the CPU twin can stop a generation it started: a call to Triton given up at its
deadline (a gRPC deadline, a closed HTTP connection) goes on at Triton to its end all the same.
So the caller gets its 504 at the deadline, but the call itself runs on, and the request's places
(its rows' places under --max-in-flight, its key's max_concurrent and tokens) are given back only
when Triton's answer comes. Given back at the 504, they would let a tenant whose requests outlive
the timeout pile generations onto Triton past every limit, ahead of every other tenant.

A call that has not ended LOST_AFTER deadlines in is taken for lost (the client's own timeout ends
it), so a server that never answers cannot keep places for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ftprefix.gateway.errors import ApiError, log, timed_out

T = TypeVar("T")

# the client's timeout, in request timeouts: when a call given up is given up by the gateway too
LOST_AFTER = 10.0


def client_timeout(request_timeout: float) -> float:
    """The timeout of the gateway's calls to Triton: how long an abandoned call may keep places."""
    return request_timeout * LOST_AFTER


def expired(request: str, seconds: float) -> ApiError:
    """The 504 of request `request`, which outlived its `seconds`; the operator's side to the log."""
    log.warning(
        "request %s: no answer from the model server within %g s (--request-timeout); it goes on "
        "generating, and the request's places stay taken until it ends",
        request,
        seconds,
    )
    return timed_out()


async def within(call: Awaitable[T], seconds: float, ended: Callable[[T | None], None], request: str) -> T:
    """`call`'s result if it comes within `seconds`; otherwise the 504 of `expired`, while the
    call runs on. Either way `ended` runs once, when the call itself ends: with its result, or
    with None if it failed (its exception is the caller's when it ends in time)."""
    # one future woken by whichever comes first: half the CPU of asyncio.wait's, per request
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(call)
    first = loop.create_future()

    def on_done(task: asyncio.Future[T]) -> None:
        ended(None if task.cancelled() or task.exception() is not None else task.result())
        _wake(first)

    task.add_done_callback(on_done)
    timer = loop.call_later(seconds, _wake, first)
    try:
        await first
    except asyncio.CancelledError:
        task.cancel()  # the server stops: the call goes with the request
        raise
    finally:
        timer.cancel()
    if not task.done():
        raise expired(request, seconds)
    return task.result()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
