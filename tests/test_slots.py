"""``HostSlots`` alone: how delivery slots are shared between hosts (the runner's view is in test_hostile_receivers).

Pure asyncio, no network: each scenario runs in its own event loop; ``settle`` lets every task that can
run do so (no clock involved).
"""

from __future__ import annotations

import asyncio

from timerctl.slots import HostShare, HostSlots


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_window_grows_by_one_per_answer_up_to_per_host_and_halves_per_failure_down_to_one() -> None:
    async def scenario() -> tuple[list[int], list[int], int]:
        slots = HostSlots(total=256, per_host=8, initial=4)
        grown, shrunk = [], []
        for _ in range(6):
            slots.release(await slots.acquire("a.example"), True)
            grown.append(slots.window("a.example"))
        for _ in range(5):
            slots.release(await slots.acquire("a.example"), False)
            shrunk.append(slots.window("a.example"))
        slots.release(await slots.acquire("a.example"), None)  # neither: a refusal, a malformed answer
        return grown, shrunk, slots.window("a.example")

    assert asyncio.run(scenario()) == ([5, 6, 7, 8, 8, 8], [4, 2, 1, 1, 1], 1)


def test_posts_held_by_a_full_window_start_in_order_as_soon_as_a_slot_frees() -> None:
    async def scenario() -> tuple[list[int], list[int], int]:
        slots = HostSlots(total=256, per_host=32, initial=2)
        first = [await slots.acquire("h") for _ in range(2)]
        started: list[int] = []

        async def post(i: int) -> HostShare:
            share = await slots.acquire("h")
            started.append(i)
            return share

        tasks = [asyncio.create_task(post(i)) for i in range(3)]
        await settle()
        before = list(started)
        slots.release(first[0], False)  # a timeout: the window halves to 1, one still in flight
        await settle()
        slots.release(first[1], False)
        await settle()
        after_two = list(started)
        slots.release(await tasks[0], True)  # answered: window 2, so both waiting POSTs start
        await asyncio.gather(*tasks)
        return before, after_two, len(started)

    assert asyncio.run(scenario()) == ([], [0], 3)


def test_when_every_slot_is_taken_the_next_free_one_goes_to_the_host_with_fewest_in_flight() -> None:
    async def scenario() -> tuple[bool, bool]:
        slots = HostSlots(total=4, per_host=4, initial=4)
        busy = [await slots.acquire("busy") for _ in range(3)]
        await slots.acquire("calm")
        more_busy = asyncio.create_task(slots.acquire("busy"))  # asked first
        more_calm = asyncio.create_task(slots.acquire("calm"))
        await settle()
        slots.release(busy[0], True)
        await settle()
        calm_first = more_calm.done() and not more_busy.done()
        slots.release(busy[1], True)
        await settle()
        return calm_first, more_busy.done()

    assert asyncio.run(scenario()) == (True, True)


def test_the_last_eighth_of_the_slots_is_kept_for_hosts_with_nothing_in_flight() -> None:
    async def scenario() -> tuple[int, bool, bool]:
        slots = HostSlots(total=16, per_host=16, initial=16)
        for _ in range(14):
            await slots.acquire("hanging")
        hanging_more = asyncio.create_task(slots.acquire("hanging"))
        await settle()
        await slots.acquire("healthy")  # its first request may use the reserve
        healthy_more = asyncio.create_task(slots.acquire("healthy"))  # its second may not
        await settle()
        return slots.in_flight, hanging_more.done(), healthy_more.done()

    assert asyncio.run(scenario()) == (15, False, False)


def test_a_cancelled_wait_takes_no_slot_and_a_slot_granted_as_it_was_cancelled_is_handed_on() -> None:
    async def scenario() -> tuple[int, bool, int]:
        slots = HostSlots(total=1, per_host=1, initial=1)
        holder = await slots.acquire("h")
        gone = asyncio.create_task(slots.acquire("h"))
        granted_then_cancelled = asyncio.create_task(slots.acquire("h"))
        last = asyncio.create_task(slots.acquire("h"))
        await settle()
        gone.cancel()
        await settle()
        slots.release(holder, None)  # granted to the second waiter, which is cancelled before it runs
        granted_then_cancelled.cancel()
        await settle()
        share = await last
        in_flight = slots.in_flight
        slots.release(share, None)
        return in_flight, granted_then_cancelled.cancelled(), slots.in_flight

    assert asyncio.run(scenario()) == (1, True, 0)
