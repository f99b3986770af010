"""A FastAPI app calling a flaky upstream through a circuit breaker, answering 503 when open.

The app's ``/quote`` endpoint asks a pricing service for a price with ``httpx``, through
``AsyncCircuitBreakerTransport``. ``/report`` needs the same service but uses
``requires()`` to answer early, before doing any work, while the circuit is open.
``install(app)`` turns every ``CircuitOpenError`` into ``503 Service Unavailable`` with a
``Retry-After`` header. ``/metrics`` serves the circuits to Prometheus
(``brama_actors.prometheus.BramaCollector``).

The pricing service is a small local stdlib HTTP server started by this script, switched
between healthy and failing. The script drives the app with FastAPI's ``TestClient``:
healthy, failing (the circuit opens after 3 failures), refused with 503 + Retry-After,
then recovered once the 30 s expiry has passed, and the counters ``/metrics`` shows.
The system runs on a ``ManualClock`` so those 30 s pass at once; a real app uses
``brama_actors.Brama.start()`` or the default system.
Run it with ``python examples/fastapi_app.py``.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from fastapi import Depends, FastAPI, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

import brama_actors
from brama_actors.httpx import AsyncCircuitBreakerTransport
from brama_actors.prometheus import BramaCollector
from brama_actors.starlette import install, requires
from brama_actors.testing import ManualClock

with warnings.catch_warnings():
    # Starlette 1.x's TestClient prefers httpx2 and warns when it finds httpx instead.
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient`")
    from fastapi.testclient import TestClient

CONNECTION = "pricing"
MAX_ATTEMPTS = 3
EXPIRY_MS = 30_000


# -- the flaky upstream -------------------------------------------------------------------


class PricingHandler(BaseHTTPRequestHandler):
    """Answers ``{"price": 42}``, or 503 while the server's ``healthy`` flag is off."""

    server: PricingServer

    def do_GET(self) -> None:
        self.server.requests += 1
        healthy = self.server.healthy
        body = b'{"price": 42}' if healthy else b'{"error": "overloaded"}'
        self.send_response(200 if healthy else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the demo's output to what it prints itself


class PricingServer(ThreadingHTTPServer):
    """The pricing service: a switch (``healthy``) and a request counter."""

    daemon_threads = False  # server_close() joins the handler threads
    block_on_close = True
    healthy = True
    requests = 0


@contextlib.contextmanager
def pricing_service() -> Iterator[PricingServer]:
    """Run the pricing service on 127.0.0.1 (a free port) for the ``with`` block."""
    server = PricingServer(("127.0.0.1", 0), PricingHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- the app ------------------------------------------------------------------------------


def create_app(brama: brama_actors.Brama, upstream_url: str) -> FastAPI:
    """The FastAPI app: one shared AsyncClient whose transport guards the pricing service."""
    # Registered up front (not on first use) so requires() knows the connection from the
    # first request on.
    brama.register(CONNECTION, max_attempts=MAX_ATTEMPTS, expiry=EXPIRY_MS)
    # Every request to the pricing service is one connection, named here rather than
    # after the host (the default), so the app and its dashboards read "pricing".
    transport = AsyncCircuitBreakerTransport(brama=brama,
                                             connection=lambda request: CONNECTION)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(transport=transport, base_url=upstream_url,
                                     timeout=5) as client:
            app.state.pricing = client
            yield

    app = FastAPI(lifespan=lifespan)
    install(app)  # CircuitOpenError -> 503 + Retry-After

    @app.get("/quote")
    async def quote() -> dict[str, Any]:
        # While the circuit is open this raises CircuitOpenError without a request.
        response = await app.state.pricing.get("/price")
        if response.status_code != 200:
            raise HTTPException(502, f"pricing answered {response.status_code}")
        return {"quote": response.json()["price"]}

    @app.get("/report", dependencies=[Depends(requires(CONNECTION, brama=brama))])
    async def report() -> dict[str, str]:
        # Only reached while the circuit is available: an expensive report is not
        # started when its data source is known to be down.
        return {"report": "ready"}

    # The circuits as Prometheus metrics, read at scrape time (docs/observability.md).
    registry = CollectorRegistry()
    registry.register(BramaCollector(brama))

    # A plain def: FastAPI runs it in its threadpool, so a scrape (which reads every
    # connection) never blocks the event loop.
    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


# -- the scripted demo --------------------------------------------------------------------


def show(client: TestClient, path: str) -> Any:
    """GET ``path`` and print the answer (with Retry-After when there is one)."""
    response = client.get(path)
    retry = response.headers.get("Retry-After")
    extra = f"  Retry-After: {retry}" if retry is not None else ""
    print(f"GET {path:<8} -> {response.status_code} {response.json()}{extra}")
    return response


def main() -> None:
    """Drive the app through healthy, failing, open and recovered, checking each step."""
    clock = ManualClock(start_ms=1_700_000_000_000)
    with pricing_service() as upstream, brama_actors.Brama.start(clock=clock) as brama:
        app = create_app(brama, f"http://127.0.0.1:{upstream.server_address[1]}")
        with TestClient(app) as client:
            print("pricing healthy:")
            assert show(client, "/quote").status_code == 200
            assert show(client, "/report").status_code == 200

            print("pricing failing:")
            upstream.healthy = False
            for _ in range(MAX_ATTEMPTS):
                assert show(client, "/quote").status_code == 502
            print(f"circuit: {brama.status(CONNECTION).state.value}")

            seen = upstream.requests
            clock.advance(10_000)  # 10 s later: 20 s of the 30 s expiry left
            refused = show(client, "/quote")
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "20"
            assert show(client, "/report").status_code == 503
            assert upstream.requests == seen  # refused without calling pricing

            print("pricing healthy again, 20 s later:")
            upstream.healthy = True
            clock.advance(20_000)  # expiry over: half_open, the next call is the trial
            assert show(client, "/quote").status_code == 200
            print(f"circuit: {brama.status(CONNECTION).state.value}")
            assert show(client, "/report").status_code == 200

            print("GET /metrics (excerpt):")
            text = client.get("/metrics").text
            for line in text.splitlines():
                if line.startswith(("brama_calls_total", "brama_transitions_total")):
                    print(f"  {line}")
            assert 'brama_calls_total{connection="pricing",outcome="rejected",scope=""} 1.0' \
                in text


if __name__ == "__main__":
    main()
