"""Fair admission (ftprefix.gateway.admission) on its own: who gets the next place at Triton.

Driven on one event loop without a server: each `step()` lets every ready task run once (the loop's
own scheduling, no clock), so the order of admissions is exact.
"""

from __future__ import annotations

import asyncio

import pytest

from ftprefix.gateway.admission import Admission, ClientGone, QueueTimeout

FOREVER = 3600.0


async def step() -> None:
    for _ in range(3):
        await asyncio.sleep(0)  # one pass of the loop's ready queue, no waiting


async def _admissions(
    admission: Admission, arrivals: list[str], weights: dict[str, int] | None = None
) -> list[str]:
    """Tenants in the order they get a place, when `arrivals` queue (in that order) behind one place
    that is taken, and each admitted request leaves as soon as it got in."""
    order: list[str] = []
    assert await admission.enter("holder", FOREVER) == 0.0  # the one place is taken

    async def request(tenant: str) -> None:
        await admission.enter(tenant, FOREVER, weight=(weights or {}).get(tenant, 1))
        order.append(tenant)

    tasks = []
    for tenant in arrivals:
        tasks.append(asyncio.ensure_future(request(tenant)))
        await step()  # arrives (and queues) before the next
    assert admission.waiting == len(arrivals)
    for _ in arrivals:
        admission.leave()  # the place is handed on: the next in turn gets it
        await step()
    await asyncio.gather(*tasks)
    admission.leave()
    assert admission.in_flight == 0 and admission.waiting == 0
    return order


def test_a_tenant_with_one_request_waits_for_one_request_of_each_other_tenant() -> None:
    arrivals = ["A"] * 6 + ["B"] + ["C"] * 2
    order = asyncio.run(_admissions(Admission(1), arrivals))
    assert order == ["A", "B", "C", "A", "C", "A", "A", "A", "A"]


def test_a_tenants_weight_is_its_requests_per_turn() -> None:
    """Weighted round robin: A (weight 3) three requests a turn, B and C one, each turn carried on
    over places freed one at a time; a tenant whose queue runs dry leaves the turns."""
    arrivals = ["A"] * 8 + ["B"] * 3 + ["C"]
    order = asyncio.run(_admissions(Admission(1), arrivals, {"A": 3}))
    assert order == ["A", "A", "A", "B", "C", "A", "A", "A", "B", "A", "A", "B"]


def test_weights_do_not_reorder_fifo_admission() -> None:
    arrivals = ["A"] * 4 + ["B"] * 2 + ["A"]
    assert asyncio.run(_admissions(Admission(1, fair=False), arrivals, {"A": 3})) == arrivals


def test_fifo_admission_serves_arrival_order() -> None:
    arrivals = ["A"] * 6 + ["B"] + ["C"] * 2
    assert asyncio.run(_admissions(Admission(1, fair=False), arrivals)) == arrivals


def test_places_are_free_until_the_limit() -> None:
    async def run() -> None:
        admission = Admission(3)
        for _ in range(3):
            assert await admission.enter("A", FOREVER) == 0.0
        waiter = asyncio.ensure_future(admission.enter("B", FOREVER))
        await step()
        assert not waiter.done() and admission.in_flight == 3 and admission.waiting == 1
        admission.leave()
        assert await waiter >= 0.0
        assert admission.in_flight == 3 and admission.waiting == 0

    asyncio.run(run())


def test_a_waiter_whose_time_is_up_leaves_the_queue() -> None:
    async def run() -> None:
        admission = Admission(1)
        await admission.enter("A", FOREVER)
        later = asyncio.ensure_future(admission.enter("C", FOREVER))
        await step()
        with pytest.raises(QueueTimeout):
            await admission.enter("B", 0.01)
        assert admission.waiting == 1  # B is gone, C still waits
        admission.leave()
        await later
        admission.leave()
        assert admission.in_flight == 0

    asyncio.run(run())


def test_a_waiter_whose_client_left_leaves_at_once() -> None:
    async def run() -> None:
        admission = Admission(1)
        await admission.enter("A", FOREVER)
        disconnected = asyncio.get_running_loop().create_future()

        async def gone() -> None:
            await disconnected

        waiter = asyncio.ensure_future(admission.enter("B", FOREVER, gone))
        await step()
        assert admission.waiting == 1
        disconnected.set_result(None)
        with pytest.raises(ClientGone):
            await waiter
        assert admission.waiting == 0
        admission.leave()
        assert admission.in_flight == 0

    asyncio.run(run())


def test_a_cancelled_waiter_leaves_and_a_place_granted_meanwhile_is_handed_on() -> None:
    async def run() -> None:
        admission = Admission(1)
        await admission.enter("A", FOREVER)
        first = asyncio.ensure_future(admission.enter("B", FOREVER))
        second = asyncio.ensure_future(admission.enter("C", FOREVER))
        await step()
        admission.leave()  # B's place is granted...
        first.cancel()  # ...and B's client cancels before it ran: the place goes to C
        with pytest.raises(asyncio.CancelledError):
            await first
        await second
        assert admission.in_flight == 1 and admission.waiting == 0
        admission.leave()
        assert admission.in_flight == 0

    asyncio.run(run())


# -- a request of several prompts takes a place per row -------------------------------------------


def test_a_request_of_several_prompts_takes_a_place_per_row() -> None:
    async def run() -> None:
        admission = Admission(4)
        assert await admission.enter("A", FOREVER, places=3) == 0.0
        waiter = asyncio.ensure_future(admission.enter("B", FOREVER, places=2))
        await step()
        assert not waiter.done() and admission.in_flight == 3  # 2 more would be 5, over the 4
        admission.leave(3)
        await waiter
        assert admission.in_flight == 2
        admission.leave(2)
        assert admission.in_flight == 0 and admission.waiting == 0

    asyncio.run(run())


def test_nothing_overtakes_a_large_request_whose_turn_it_is() -> None:
    """B's batch of 4 waits for every place; C's single request, which would fit at once, comes
    after it: small requests cannot starve a large one by slipping into each freed place."""

    async def run() -> list[str]:
        admission = Admission(4)
        order: list[str] = []
        await admission.enter("A", FOREVER, places=3)

        async def request(tenant: str, places: int) -> None:
            await admission.enter(tenant, FOREVER, places=places)
            order.append(tenant)

        large = asyncio.ensure_future(request("B", 4))
        await step()
        small = asyncio.ensure_future(request("C", 1))  # one place is free, but B's turn is first
        await step()
        assert order == [] and admission.waiting == 2
        admission.leave(3)
        await step()
        assert order == ["B"] and admission.in_flight == 4
        admission.leave(4)
        await asyncio.gather(large, small)
        admission.leave(1)
        assert admission.in_flight == 0
        return order

    assert asyncio.run(run()) == ["B", "C"]


def test_a_request_larger_than_the_limit_runs_alone() -> None:
    async def run() -> None:
        admission = Admission(2)
        assert await admission.enter("A", FOREVER, places=5) == 0.0  # nothing else there: it goes
        waiter = asyncio.ensure_future(admission.enter("B", FOREVER))
        await step()
        assert not waiter.done()
        admission.leave(5)
        await waiter
        big = asyncio.ensure_future(admission.enter("A", FOREVER, places=5))
        await step()
        assert not big.done()  # it waits until it would be alone
        admission.leave(1)
        await big
        admission.leave(5)
        assert admission.in_flight == 0 and admission.waiting == 0

    asyncio.run(run())


def test_a_large_request_that_gives_up_lets_the_next_in_turn_in() -> None:
    async def run() -> None:
        admission = Admission(4)
        await admission.enter("A", FOREVER, places=2)
        large = asyncio.ensure_future(admission.enter("B", 0.05, places=4))  # needs every place
        await step()
        small = asyncio.ensure_future(admission.enter("C", FOREVER, places=2))  # fits, after B
        await step()
        assert not small.done() and admission.waiting == 2
        with pytest.raises(QueueTimeout):
            await large
        await small  # B left the queue: C's places were free all along
        assert admission.in_flight == 4 and admission.waiting == 0
        admission.leave(2)
        admission.leave(2)
        assert admission.in_flight == 0

    asyncio.run(run())
