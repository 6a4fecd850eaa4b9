"""Fair admission: at most N requests at Triton, and the waiting ones admitted round-robin by tenant.

Triton serves its queue first come, first served, and FT runs each batch to its longest row, so
a tenant that sends 200 requests at once puts every other tenant's request behind its own. The
gateway therefore keeps at most `limit` requests at Triton (`--max-in-flight`; by default what
fills the model's batches, max_batch_size x instances) and, when they are all taken, queues the
rest per tenant and hands each freed place to the next tenant in turn that has one waiting: a
tenant with one request waits for at most one request of each other tenant, however many those
others queued. A waiting request that gives up (its time is up, its client went away) leaves the
queue at once; a request holds its place until its last token is out (streams included).

One process, one event loop: no locks. `enter` and `leave` cost a few dict and deque operations.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable


class QueueTimeout(Exception):
    """A request waited its whole queue timeout without a place."""


class ClientGone(Exception):
    """The client went away while its request waited."""


class Admission:
    """`fair`: round-robin by tenant; False: one queue, first come first served (for comparison)."""

    def __init__(self, limit: int | None = None, *, fair: bool = True) -> None:
        self.limit = limit  # None until set (the model's batch capacity is read on first use)
        self.fair = fair
        self.in_flight = 0
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._turns: deque[str] = deque()  # tenants with waiters, in the order they are served
        self.changed: Callable[[], None] | None = None  # told whenever a place is taken or freed

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def _free(self) -> bool:
        return self.limit is None or self.in_flight < self.limit

    async def enter(
        self, tenant: str, timeout: float, gone: Callable[[], Awaitable[object]] | None = None
    ) -> float:
        """Take a place at Triton for `tenant`; the seconds waited. QueueTimeout after `timeout`
        seconds; ClientGone as soon as what `gone()` returns completes (the client's disconnect),
        which is asked for only when the request has to wait."""
        if self._free() and not self._turns:
            self.in_flight += 1
            self._changed()
            return 0.0
        started = time.perf_counter()
        tenant = tenant if self.fair else ""
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting.get(tenant)
        if queue is None:
            queue = self._waiting[tenant] = deque()
            self._turns.append(tenant)
        queue.append(place)
        self._changed()
        watch = asyncio.ensure_future(gone()) if gone is not None else None
        try:
            waits = {place} if watch is None else {place, watch}
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._give_up(tenant, place)
            raise
        finally:
            if watch is not None and not watch.done():
                watch.cancel()
        if place.done() and not place.cancelled():
            self._changed()
            return time.perf_counter() - started
        self._give_up(tenant, place)
        if watch is not None and watch.done() and not watch.cancelled():
            raise ClientGone
        raise QueueTimeout

    def _give_up(self, tenant: str, place: asyncio.Future[None]) -> None:
        """`place` leaves the queue; one already granted is handed back."""
        if place.done() and not place.cancelled():
            self.leave()
            return
        place.cancel()
        queue = self._waiting.get(tenant)
        if queue is not None and place in queue:
            queue.remove(place)
            if not queue:
                del self._waiting[tenant]
                self._turns.remove(tenant)
        self._changed()

    def leave(self) -> None:
        """A request is done at Triton: its place goes to the next tenant in turn, if one waits."""
        while self._turns and self._free_after_leave():
            tenant = self._turns.popleft()
            queue = self._waiting[tenant]
            place = queue.popleft()
            if queue:
                self._turns.append(tenant)  # its next request waits for the others' turns
            else:
                del self._waiting[tenant]
            if not place.done():
                place.set_result(None)  # the place passes on: in_flight stays
                return
        self.in_flight -= 1
        self._changed()

    def _changed(self) -> None:
        if self.changed is not None:
            self.changed()

    def _free_after_leave(self) -> bool:
        # with a lowered limit, places freed above it are not handed on
        return self.limit is None or self.in_flight <= self.limit
