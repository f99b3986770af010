"""Rate and slow-call rules (API.md section 12): open on a failure rate or a slow-call
rate over a window, not only on consecutive failures.

Run: ``python examples/rate_rules.py``. The system runs on a ManualClock, so the time
window's seconds pass instantly and the output is the same on every run.
"""

from __future__ import annotations

import brama_actors
from brama_actors.testing import ManualClock


def main() -> None:
    clock = ManualClock()
    with brama_actors.Brama.start(clock=clock) as brama:
        opened = brama.subscribe(events=["circuit_opened"])

        # 1. A flaky API: failures between successes never make 5 in a row, but half of
        #    the last 20 calls failed.
        brama.register("search_api", max_attempts=5, failure_rate_threshold=0.5,
                       window_size=20, minimum_calls=10)
        for i in range(20):
            if i % 2:
                brama.failure("search_api", reason="HTTP 503")
            else:
                brama.success("search_api")
            if brama.status("search_api").state == "open":
                break
        status = brama.status("search_api")
        print(f"search_api: {status.state.value} after {status.total_successes} successes "
              f"and {status.total_failures} failures (never 5 in a row)")

        # 2. A database that answers, slowly: over the last 10 s, half of the calls took
        #    500 ms or more. The consecutive rule is off (max_attempts=0).
        brama.register("orders_db", max_attempts=0, slow_call_rate_threshold=0.5,
                       slow_call_duration=500, window_type="time", window_size=10_000,
                       minimum_calls=5)
        for took in (120, 900, 300, 700, 250):
            brama.success("orders_db", duration=took)
            clock.advance(1_000)
        status = brama.status("orders_db")
        print(f"orders_db: {status.state.value}, slow_call_rate={status.slow_call_rate}, "
              f"window_calls={status.window_calls}")
        brama.success("orders_db", duration=2_000)  # 3 of 6 slow: 0.5
        print(f"orders_db: {brama.status('orders_db').state.value}")

        brama.drain()
        while True:
            try:
                event = opened.get(timeout=0)
            except Exception:
                break
            print(f"circuit_opened {event.connection}: {event.data['reason']}, "
                  f"failure_rate={event.data['failure_rate']:.2f}, "
                  f"slow_call_rate={event.data['slow_call_rate']:.2f}")


if __name__ == "__main__":
    main()
