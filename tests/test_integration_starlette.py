"""brama_actors.starlette with Starlette's and FastAPI's TestClient (API.md section 15)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import brama_actors
from brama_actors import Brama, ConnectionNotFound, InvalidIdentifier
from brama_actors.httpx import AsyncCircuitBreakerTransport
from brama_actors.starlette import install, requires
from brama_actors.testing import ManualClock, set_state
from tests.http_server import Upstream, serve

with warnings.catch_warnings():
    # Starlette 1.x asks for httpx2 in its TestClient; the httpx the test extra installs
    # still works. Only this import is exempt from filterwarnings = error.
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient`")
    from starlette.testclient import TestClient


def _advance(brama: Brama, ms: int) -> None:
    clock = brama.clock
    assert isinstance(clock, ManualClock)
    clock.advance(ms)


def _guarded_app(brama: Brama) -> Starlette:
    """A Starlette app whose one endpoint runs a guarded block on connection "db"."""

    async def read(request: Request) -> PlainTextResponse:
        async with brama.guard("db"):
            return PlainTextResponse("rows")

    async def crash(request: Request) -> PlainTextResponse:
        raise RuntimeError("not a circuit")

    app = Starlette(routes=[Route("/read", read), Route("/crash", crash)])
    install(app)
    return app


# -- install ------------------------------------------------------------------------------


@pytest.mark.parametrize(("elapsed", "retry_after"), [
    (0, "3"), (1, "3"), (499, "3"), (500, "2"), (1_499, "2"), (2_499, "1"),
])
def test_circuit_open_is_503_with_retry_after(brama: Brama, elapsed: int,
                                              retry_after: str) -> None:
    """CircuitOpenError becomes 503, Retry-After = ceil(retry_after / 1000) seconds."""
    brama.register("db", expiry=2_500)
    brama.open_circuit("db")
    _advance(brama, elapsed)
    with TestClient(_guarded_app(brama)) as http:
        response = http.get("/read")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == retry_after
    assert response.json() == {"detail": "Service Unavailable"}


def test_half_open_and_full_is_retry_after_zero(brama: Brama) -> None:
    """Half-open with every trial permit taken: 503 with Retry-After 0."""
    brama.register("db")
    set_state("db", "half_open", brama=brama)
    held = brama.guard("db")
    held.__enter__()  # the one trial permit
    try:
        with TestClient(_guarded_app(brama)) as http:
            response = http.get("/read")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "0"
    finally:
        held.__exit__(None, None, None)


def test_closed_circuit_and_other_errors_untouched(brama: Brama) -> None:
    """A closed circuit answers normally; other exceptions stay 500s."""
    with TestClient(_guarded_app(brama), raise_server_exceptions=False) as http:
        assert http.get("/read").text == "rows"
        assert http.get("/crash").status_code == 500


def test_install_needs_an_app() -> None:
    """install() of something that is not a Starlette app is a TypeError."""
    with pytest.raises(TypeError, match="Starlette"):
        install(object())  # type: ignore[arg-type]


# -- requires -----------------------------------------------------------------------------


def _requiring_app(brama: Brama | brama_actors.Client | None, identifier: str = "db",
                   scope: str | None = None) -> tuple[FastAPI, list[str]]:
    app = FastAPI()
    install(app)
    ran: list[str] = []

    @app.get("/orders", dependencies=[Depends(requires(identifier, scope=scope,
                                                        brama=brama))])
    def orders() -> dict[str, str]:
        ran.append("orders")
        return {"orders": "ok"}

    return app, ran


def test_requires_available_runs_the_endpoint(brama: Brama) -> None:
    """A closed circuit lets the request through to the endpoint."""
    brama.register("db")
    app, ran = _requiring_app(brama)
    with TestClient(app) as http:
        assert http.get("/orders").json() == {"orders": "ok"}
    assert ran == ["orders"]


def test_requires_open_is_503(brama: Brama) -> None:
    """An open circuit: 503 with Retry-After, the endpoint never runs, nothing recorded."""
    brama.register("db", expiry=10_000)
    brama.open_circuit("db")
    _advance(brama, 2_500)
    before = brama.status("db")
    app, ran = _requiring_app(brama)
    with TestClient(app) as http:
        response = http.get("/orders")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "8"
    assert ran == []
    after = brama.status("db")
    assert (after.total_failures, after.total_successes, after.total_rejections) == (
        before.total_failures, before.total_successes, 0)


def test_requires_takes_no_trial_permit(brama: Brama) -> None:
    """half_open: requires() lets requests through and leaves the trial permit free."""
    brama.register("db", half_open_max_calls=1)
    set_state("db", "half_open", brama=brama)
    app, ran = _requiring_app(brama)
    with TestClient(app) as http:
        assert http.get("/orders").status_code == 200
        held = brama.guard("db")
        held.__enter__()  # the permit was still free: requires() did not take it
        try:
            assert http.get("/orders").status_code == 200  # available() is still True
        finally:
            held.__exit__(None, None, None)
    assert ran == ["orders", "orders"]
    assert brama.status("db").state == "closed"


def test_requires_unknown_connection(brama: Brama) -> None:
    """An unknown connection raises ConnectionNotFound (a server error, not a 503)."""
    app, ran = _requiring_app(brama, "nobody")
    with TestClient(app) as http, pytest.raises(ConnectionNotFound, match="nobody"):
        http.get("/orders")
    assert ran == []


def test_requires_scoped_connection(brama: Brama) -> None:
    """scope= names a scoped connection; the unscoped one of that name is another."""
    brama.register("db", scope="eu")
    brama.register("db")
    brama.open_circuit("db", scope="eu")
    eu, _ = _requiring_app(brama, scope="eu")
    plain, _ = _requiring_app(brama)
    with TestClient(eu) as http:
        assert http.get("/orders").status_code == 503
    with TestClient(plain) as http:
        assert http.get("/orders").status_code == 200


def test_requires_default_system() -> None:
    """brama=None looks the default system up per request."""
    brama_actors.register("db")
    brama_actors.open_circuit("db")
    app, _ = _requiring_app(None)
    with TestClient(app) as http:
        assert http.get("/orders").status_code == 503
    brama_actors.close_circuit("db")
    with TestClient(app) as http:
        assert http.get("/orders").status_code == 200


def test_requires_through_a_client(node: tuple[Brama, brama_actors.Server],
                                   client: brama_actors.Client) -> None:
    """brama= a Client: the node's circuit decides; Retry-After from the node's clock."""
    system, _ = node
    system.register("db", expiry=60_000)
    system.open_circuit("db")
    status = client.status("db")  # the client has seen the node's state
    app, ran = _requiring_app(client)
    deadline = status.opened_at + status.expiry
    with TestClient(app) as http:
        before = system.clock.now()
        response = http.get("/orders")
        after = system.clock.now()
    assert response.status_code == 503
    # retry_after is the time left of the opening, read on the node's (real) clock.
    earliest, latest = math.ceil((deadline - after) / 1000), math.ceil((deadline - before) / 1000)
    assert earliest <= int(response.headers["Retry-After"]) <= latest
    assert ran == []


def test_requires_refuses_while_a_stale_client_denies(tmp_path: Any) -> None:
    """available() is False without the circuit being open (a client whose node is
    gone, with when_stale="deny"): still 503, Retry-After 0, the endpoint not run."""
    now = [100.0]
    address = str(tmp_path / "node.sock")
    node = Brama.start()
    node.serve(address, authkey=b"k")
    node.register("db")
    client = brama_actors.Client(address, b"k", stale_after=1_000, when_stale="deny",
                                 _monotonic=lambda: now[0])
    try:
        client.status("db")
        node.stop()
        assert client._authority.unlinked.wait(10)
        now[0] += 1.001  # past stale_after: available() denies
        app, ran = _requiring_app(client)
        with TestClient(app) as http:
            response = http.get("/orders")
        assert (response.status_code, response.headers["Retry-After"]) == (503, "0")
        assert ran == []
    finally:
        client.close()


def test_requires_bad_arguments() -> None:
    """A bad identifier or scope is InvalidIdentifier; a bad brama a TypeError."""
    with pytest.raises(InvalidIdentifier):
        requires("")
    with pytest.raises(InvalidIdentifier):
        requires("db", scope="")
    with pytest.raises(TypeError, match="brama"):
        requires("db", brama="system")


# -- together -----------------------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A real HTTP server on 127.0.0.1, stopped (threads joined) after the test."""
    with serve() as server:
        yield server


def test_fastapi_calling_a_flaky_upstream(brama: Brama, upstream: Upstream) -> None:
    """An app calling out through AsyncCircuitBreakerTransport answers 503 once open."""
    transport = AsyncCircuitBreakerTransport(brama=brama, max_attempts=2, expiry=30_000)
    app = FastAPI()
    install(app)

    @app.get("/quote")
    async def quote() -> dict[str, int]:
        async with httpx.AsyncClient(transport=transport, timeout=10) as http:
            answer = await http.get(upstream.url)
        return {"upstream": answer.status_code}

    upstream.answer(503)
    with TestClient(app) as client:
        assert client.get("/quote").json() == {"upstream": 503}
        assert client.get("/quote").json() == {"upstream": 503}
        _advance(brama, 10_000)
        refused = client.get("/quote")
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "20"
    assert upstream.requests == 2
