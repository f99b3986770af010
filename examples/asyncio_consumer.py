"""Consume circuit events from asyncio code without blocking the event loop.

Run: ``python examples/asyncio_consumer.py``. ``await sub.aget()`` and ``async for``
wait for events while the loop keeps serving other tasks.
"""

from __future__ import annotations

import asyncio

from brama_actors import Brama, Event


async def consume(sub: object, seen: list[Event]) -> None:
    async for item in sub:  # type: ignore[attr-defined]
        seen.append(item)
        print(f"{item.connection}: {item.event.value} -> {item.data['state']}")
        if item.event == "state_change" and item.data["new_state"] == "open":
            return


async def main_async() -> int:
    seen: list[Event] = []
    with Brama.start(max_attempts=3) as brama:
        brama.register("inventory_db")
        sub = brama.subscribe(connection="inventory_db",
                              events=["failure", "state_change"])
        consumer = asyncio.create_task(consume(sub, seen))
        loop = asyncio.get_running_loop()
        for n in range(3):
            # Reporting is synchronous; run it off the loop like any blocking call.
            await loop.run_in_executor(None, lambda n=n: brama.failure(
                "inventory_db", reason=f"timeout {n}"))
            await asyncio.sleep(0)
        await asyncio.wait_for(consumer, timeout=5)
    return 0 if seen and seen[-1].event == "state_change" else 1


def main() -> int:
    return asyncio.run(main_async())


if __name__ == "__main__":
    raise SystemExit(main())
