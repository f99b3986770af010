"""Keep up with a burst of events: read an inbox in batches with ``get_many``.

Run: ``python examples/bulk_reader.py``. During an outage every caller reports failures
at once; a dashboard that takes one event per ``get()`` pays a lock and a wake-up per
event, one that calls ``get_many()`` takes the whole burst at once.
"""

from __future__ import annotations

import collections
import threading

from brama_actors import Brama, Event


def main() -> int:
    with Brama.start(max_attempts=1_000) as brama:
        for name in ("orders_db", "payments_api", "search"):
            brama.register(name)
        sub = brama.subscribe(events=["failure"])
        per_connection: collections.Counter[str] = collections.Counter()
        batches = 0

        def report(name: str, n: int) -> None:
            for i in range(n):
                brama.failure(name, reason=f"timeout {i}")

        reporters = [threading.Thread(target=report, args=(name, 500))
                     for name in ("orders_db", "payments_api", "search")]
        for thread in reporters:
            thread.start()
        while sum(per_connection.values()) < 1_500:
            events = sub.get_many(max_items=1_000, timeout=5.0)
            if not events:
                print("no events within 5 s")
                return 1
            batches += 1
            # Unbatched subscription: each item is one Event (a tuple when batched).
            per_connection.update(str(event.connection) for event in events
                                  if isinstance(event, Event))
        for thread in reporters:
            thread.join()
        for name, count in sorted(per_connection.items()):
            print(f"{name}: {count} failures")
        print(f"1,500 events read in {batches} get_many() call(s)"
              if batches > 1 else "1,500 events read in one get_many() call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
