"""A worker's execution slots: in order, handed over, never lost to a cancelled waiter, refused once stopping."""

from __future__ import annotations

import asyncio

import pytest

from naq_ipy.worker.slots import Slots, SlotsClosed


async def test_slots_are_taken_in_order_and_handed_to_the_next_waiter() -> None:
    slots = Slots(2)
    await slots.take()
    await slots.take()
    waiters = [asyncio.create_task(slots.take()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(task.done() for task in waiters) and slots.taken == 2
    for expected in range(3):
        slots.release()
        await asyncio.wait_for(waiters[expected], 1)
        assert [task.done() for task in waiters] == [i <= expected for i in range(3)] and slots.taken == 2
    for _ in range(2):
        slots.release()
    assert slots.taken == 0


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    slots = Slots(1)
    await slots.take()
    first, second = asyncio.create_task(slots.take()), asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    slots.release()  # handed to `first`...
    first.cancel()  # ...which is cancelled before it ran: the slot goes on to `second`
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)
    assert slots.taken == 1
    waiting = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    waiting.cancel()  # cancelled while still in line: it leaves the line
    await asyncio.gather(waiting, return_exceptions=True)
    slots.release()
    assert slots.taken == 0


async def test_closing_refuses_every_waiter_and_later_takes() -> None:
    slots = Slots(1)
    await slots.take()
    waiters = [asyncio.create_task(slots.take()) for _ in range(2)]
    await asyncio.sleep(0)
    slots.close()
    for task in waiters:
        with pytest.raises(SlotsClosed):
            await task
    with pytest.raises(SlotsClosed):
        await slots.take()
    slots.release()  # the held slot is still given back
    assert slots.taken == 0
