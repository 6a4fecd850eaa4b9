"""Fair admission: at most N rows at Triton, and the waiting requests admitted round-robin by tenant.

Triton serves its queue first come, first served, and FT runs each batch to its longest row, so
a tenant that sends 200 requests at once puts every other tenant's request behind its own. The
gateway therefore keeps at most `limit` places taken at Triton (`--max-in-flight`; by default
what fills the model's batches, max_batch_size x instances), one per prompt row: a request of N
prompts takes N places (the client sends them as batches of up to max_batch_size rows, all at
once), so a batch in one request counts as much as N requests, and one larger than the limit runs
alone. When the places are taken, the rest queue per tenant and freed places go to the next
tenant in turn that has a request waiting, once there are enough of them for it (no request
overtakes the one whose turn it is: a large one is not starved by small ones): a tenant with one
request waits for at most one request of each other tenant (of weight 1), however many those others
queued. A tenant's weight (its keys' `weight`, default 1) is how many of its waiting requests one
turn admits, so tenants that all wait are admitted in proportion to their weights (weighted round
robin, counted in requests as the turns are). A waiting request that gives up (its time is up, its
client went away) leaves the queue at once; a request holds its places until its last token is
out (streams included).

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
        self.in_flight = 0  # places taken: prompt rows at Triton
        self._waiting: dict[str, deque[tuple[asyncio.Future[None], int]]] = {}
        self._turns: deque[str] = deque()  # tenants with waiters, in the order they are served
        self._weights: dict[str, int] = {}  # a waiting tenant's requests per turn
        self._turn_used = 0  # requests the tenant at the head of `_turns` was admitted this turn
        self.changed: Callable[[], None] | None = None  # told whenever a place is taken or freed

    @property
    def waiting(self) -> int:
        """Requests waiting for their places."""
        return sum(len(q) for q in self._waiting.values())

    def _fits(self, places: int) -> bool:
        # one request larger than the limit runs alone
        return self.limit is None or self.in_flight + places <= self.limit or self.in_flight == 0

    async def enter(
        self,
        tenant: str,
        timeout: float,
        gone: Callable[[], Awaitable[object]] | None = None,
        places: int = 1,
        weight: int = 1,
    ) -> float:
        """Take `places` places at Triton (one per prompt row) for `tenant`, whose turns admit up to
        `weight` requests each; the seconds waited.
        QueueTimeout after `timeout` seconds; ClientGone as soon as what `gone()` returns
        completes (the client's disconnect), which is asked for only when the request has to wait.
        `leave(places)` gives them back."""
        if not self._turns and self._fits(places):
            self.in_flight += places
            self._changed()
            return 0.0
        started = time.perf_counter()
        tenant = tenant if self.fair else ""
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting.get(tenant)
        if queue is None:
            queue = self._waiting[tenant] = deque()
            self._turns.append(tenant)
        self._weights[tenant] = weight if self.fair else 1  # the latest: a keys file read again
        queue.append((place, places))
        self._changed()
        watch = asyncio.ensure_future(gone()) if gone is not None else None
        try:
            waits = {place} if watch is None else {place, watch}
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._give_up(tenant, place, places)
            raise
        finally:
            if watch is not None and not watch.done():
                watch.cancel()
        if place.done() and not place.cancelled():
            self._changed()
            return time.perf_counter() - started
        self._give_up(tenant, place, places)
        if watch is not None and watch.done() and not watch.cancelled():
            raise ClientGone
        raise QueueTimeout

    def _give_up(self, tenant: str, place: asyncio.Future[None], places: int) -> None:
        """`place` leaves the queue; places already granted are handed back."""
        if place.done() and not place.cancelled():
            self.leave(places)
            return
        place.cancel()
        queue = self._waiting.get(tenant)
        if queue is not None and (place, places) in queue:
            queue.remove((place, places))
            if not queue:
                self._drop(tenant)
        self._grant()  # the request it held up may fit now
        self._changed()

    def leave(self, places: int = 1) -> None:
        """A request is done at Triton: its places go to the next tenants in turn, if any wait."""
        self.in_flight -= places
        self._grant()
        self._changed()

    def _grant(self) -> None:
        """Admit the waiting requests in turn while the next one's places are free."""
        while self._turns:
            tenant = self._turns[0]
            queue = self._waiting[tenant]
            place, places = queue[0]
            if not place.done() and not self._fits(places):
                return  # its turn: nothing overtakes it
            queue.popleft()
            if not place.done():
                self.in_flight += places
                place.set_result(None)
                self._turn_used += 1
            if not queue:
                self._drop(tenant)
            elif self._turn_used >= self._weights[tenant]:
                self._turns.rotate(-1)  # its next request waits for the others' turns
                self._turn_used = 0

    def _drop(self, tenant: str) -> None:
        """`tenant` has no request waiting any more: it leaves the turns."""
        if self._turns[0] == tenant:
            self._turn_used = 0  # the next tenant's turn starts afresh
        self._turns.remove(tenant)
        del self._waiting[tenant], self._weights[tenant]

    def _changed(self) -> None:
        if self.changed is not None:
            self.changed()
