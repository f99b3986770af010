"""Guard options: which exceptions count, a fallback for refused calls, a timeout.

Run: ``python examples/guard_options.py``. A client library raises ``NotFound`` for a
missing order (our caller's problem, not the service's) and ``ConnectionError`` when the
service is down; a cache answers while the circuit is open; a search that hangs is
cancelled after 50 ms and counted as a failure.
"""

from __future__ import annotations

import asyncio

import brama_actors


class NotFound(Exception):
    """The order does not exist."""


def main() -> int:
    with brama_actors.Brama.start() as brama:
        cache = {3: {"id": 3, "total": 42}}

        @brama_actors.circuit_breaker(
            "orders_api", brama=brama, max_attempts=2,
            exclude=NotFound,                       # says nothing about the service
            fallback=cache.get)
        def fetch(order_id: int) -> dict[str, int] | None:
            if order_id == 0:
                raise NotFound(order_id)
            raise ConnectionError("HTTP 503")

        @brama_actors.circuit_breaker("search_api", brama=brama, timeout=50)
        async def search(term: str) -> list[str]:
            await asyncio.Event().wait()            # the service never answers
            return []

        try:
            fetch(0)
        except NotFound:
            print("NotFound: not counted;", brama.status("orders_api").failure_count,
                  "failures")
        for _ in range(2):
            try:
                fetch(1)
            except ConnectionError:
                pass
        print("orders_api is", brama.status("orders_api").state.value)
        print("order 3 from the cache:", fetch(3))
        try:
            asyncio.run(search("shoes"))
        except TimeoutError as exc:
            print("search:", exc, "- recorded as",
                  repr(brama.status("search_api").total_failures), "failure")
        try:
            with brama.guard("orders_api"):
                pass
        except brama_actors.CircuitOpenError as exc:
            print(f"retry after {exc.retry_after} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
