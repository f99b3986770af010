"""brama_actors.httpx against a real local HTTP server (API.md section 15)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import brama_actors
import brama_actors.httpx
from brama_actors import Brama, CircuitOpenError, InvalidConfiguration, InvalidIdentifier
from brama_actors.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport
from brama_actors.testing import ManualClock
from tests.conftest import collect
from tests.http_server import FIRST_CHUNK, STREAM_SIZE, Upstream, serve

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A real HTTP server on 127.0.0.1, stopped (threads joined) after the test."""
    with serve() as server:
        yield server


@pytest.fixture
def guarded(brama: Brama) -> Iterator[httpx.Client]:
    """An httpx client whose transport guards each host (opens after 2 failures)."""
    transport = CircuitBreakerTransport(brama=brama, max_attempts=2, expiry=1_000)
    with httpx.Client(transport=transport, timeout=10) as http:
        yield http


class RecordingTransport(httpx.HTTPTransport):
    """A real HTTPTransport that remembers what it raised and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.raised: list[BaseException] = []
        self.closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return super().handle_request(request)
        except BaseException as exc:
            self.raised.append(exc)
            raise

    def close(self) -> None:
        self.closed = True
        super().close()


class AsyncRecordingTransport(httpx.AsyncHTTPTransport):
    """The async counterpart of :class:`RecordingTransport`."""

    def __init__(self) -> None:
        super().__init__()
        self.raised: list[BaseException] = []
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except BaseException as exc:
            self.raised.append(exc)
            raise

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()


def _advance(brama: Brama, ms: int) -> None:
    clock = brama.clock
    assert isinstance(clock, ManualClock)
    clock.advance(ms)


def _failure_reasons(brama: Brama, inbox: brama_actors.Subscription) -> list[Any]:
    brama.drain()
    return [event.data["reason"] for event in collect(inbox) if event.event == "failure"]


# -- classification ----------------------------------------------------------------------


def test_success_response_returned_unchanged(brama: Brama, upstream: Upstream,
                                             guarded: httpx.Client) -> None:
    """A 200 is recorded as a success and reaches the caller as the server sent it."""
    response = guarded.get(f"{upstream.url}/ok")
    assert response.status_code == 200
    assert response.text == "answer 200\n"
    status = brama.status(HOST)
    assert (status.total_successes, status.total_failures) == (1, 0)
    assert status.scope is None
    assert status.max_attempts == 2 and status.expiry == 1_000  # register_options


def test_failure_status_recorded_with_reason(brama: Brama, upstream: Upstream,
                                             guarded: httpx.Client) -> None:
    """A status in failure_statuses is a failure (reason "HTTP 503"), response returned."""
    inbox = brama.subscribe(events=["failure"])
    upstream.answer(503)
    response = guarded.get(upstream.url)
    assert response.status_code == 503
    assert brama.status(HOST).total_failures == 1
    assert _failure_reasons(brama, inbox) == ["HTTP 503"]


def test_other_error_statuses_are_successes(brama: Brama, upstream: Upstream,
                                            guarded: httpx.Client) -> None:
    """404 is the caller's problem, not the server's: recorded as a success."""
    upstream.answer(404)
    assert guarded.get(upstream.url).status_code == 404
    status = brama.status(HOST)
    assert (status.total_successes, status.total_failures) == (1, 0)


def test_custom_failure_statuses(brama: Brama, upstream: Upstream) -> None:
    """failure_statuses replaces the default set: 404 fails, 503 succeeds."""
    transport = CircuitBreakerTransport(brama=brama, failure_statuses=[404])
    with httpx.Client(transport=transport) as http:
        upstream.answer(404)
        http.get(upstream.url)
        upstream.answer(503)
        http.get(upstream.url)
    status = brama.status(HOST)
    assert (status.total_successes, status.total_failures) == (1, 1)


# -- opening and refusing -----------------------------------------------------------------


def test_opens_and_refuses_without_sending(brama: Brama, upstream: Upstream,
                                           guarded: httpx.Client) -> None:
    """After max_attempts failures a request raises CircuitOpenError and never leaves."""
    upstream.answer(503)
    guarded.get(upstream.url)
    guarded.get(upstream.url)
    assert brama.status(HOST).state == "open"
    _advance(brama, 400)
    with pytest.raises(CircuitOpenError) as caught:
        guarded.get(upstream.url)
    assert upstream.requests == 2
    assert caught.value.status.identifier == HOST
    assert caught.value.retry_after == 600


def test_refusal_counts_in_total_rejections(brama: Brama, upstream: Upstream,
                                            guarded: httpx.Client) -> None:
    """A refused request counts in status().total_rejections (API.md sections 14, 15)."""
    upstream.answer(503)
    guarded.get(upstream.url)
    guarded.get(upstream.url)
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            guarded.get(upstream.url)
    assert brama.status(HOST).total_rejections == 3


# -- half_open ----------------------------------------------------------------------------


def _open_then_half_open(brama: Brama, upstream: Upstream, http: httpx.Client) -> None:
    upstream.answer(503)
    http.get(upstream.url)
    http.get(upstream.url)
    _advance(brama, 1_000)
    assert brama.status(HOST).state == "half_open"


def test_half_open_request_takes_the_trial_permit(brama: Brama, upstream: Upstream,
                                                  guarded: httpx.Client) -> None:
    """In half_open a request in flight holds the one permit; others are refused unsent."""
    _open_then_half_open(brama, upstream, guarded)
    upstream.answer("hold")
    upstream.arrived.clear()
    results: list[int] = []
    trial = threading.Thread(target=lambda: results.append(guarded.get(upstream.url)
                                                          .status_code))
    trial.start()
    try:
        assert upstream.arrived.wait(10)
        seen = upstream.requests
        assert brama.available(HOST)  # available() stays a pure check
        with pytest.raises(CircuitOpenError, match="half-open") as caught:
            guarded.get(upstream.url)
        assert caught.value.retry_after == 0
        assert upstream.requests == seen
    finally:
        upstream.release.set()
        trial.join(10)
    assert results == [200]
    assert brama.status(HOST).state == "closed"


def test_half_open_permit_given_back_after_failure(brama: Brama, upstream: Upstream,
                                                   guarded: httpx.Client) -> None:
    """A failed trial reopens the circuit; the next expiry admits a new trial."""
    _open_then_half_open(brama, upstream, guarded)
    guarded.get(upstream.url)  # still 503
    assert brama.status(HOST).state == "open"
    _advance(brama, 1_000)
    upstream.answer(200)
    assert guarded.get(upstream.url).status_code == 200
    assert brama.status(HOST).state == "closed"


def test_half_open_permit_given_back_after_transport_error(
        brama: Brama, upstream: Upstream, guarded: httpx.Client) -> None:
    """A trial ended by a transport error reopens the circuit, its permit back."""
    _open_then_half_open(brama, upstream, guarded)
    upstream.answer("close")
    with pytest.raises(httpx.TransportError):
        guarded.get(upstream.url)
    assert brama.status(HOST).state == "open"
    _advance(brama, 1_000)
    upstream.answer(200)
    assert guarded.get(upstream.url).status_code == 200
    assert brama.status(HOST).state == "closed"


# -- transport errors, bodies ------------------------------------------------------------


def test_transport_error_reraised_as_same_object(brama: Brama, upstream: Upstream) -> None:
    """The wrapped transport's exception propagates as the same object, recorded."""
    inner = RecordingTransport()
    inbox = brama.subscribe(events=["failure"])
    upstream.answer("close")
    with httpx.Client(transport=CircuitBreakerTransport(inner, brama=brama)) as http, \
            pytest.raises(httpx.RemoteProtocolError) as caught:
        http.get(upstream.url)
    assert inner.raised == [caught.value]
    assert brama.status(HOST).total_failures == 1
    assert _failure_reasons(brama, inbox) == [repr(caught.value)]


def test_connect_error_recorded(brama: Brama) -> None:
    """Nothing listening: the ConnectError is a failure of that host's connection."""
    with serve() as gone:
        url = gone.url
    transport = CircuitBreakerTransport(brama=brama)
    with httpx.Client(transport=transport) as http, pytest.raises(httpx.ConnectError):
        http.get(url)
    assert brama.status(HOST).total_failures == 1


def test_streamed_body_not_buffered(brama: Brama, upstream: Upstream,
                                    guarded: httpx.Client) -> None:
    """The response is handed over at its headers; the body is read by the caller."""
    upstream.answer("stream")
    with guarded.stream("GET", upstream.url) as response:
        # Only FIRST_CHUNK bytes are sent until release: a transport that read the
        # body could not have returned yet.
        assert not upstream.body_sent.is_set()
        assert response.status_code == 200
        assert brama.status(HOST).total_successes == 1
        upstream.release.set()
        body = response.read()
    assert len(body) == STREAM_SIZE > FIRST_CHUNK
    assert upstream.body_sent.wait(10)


# -- connections --------------------------------------------------------------------------


def test_one_connection_per_host(brama: Brama, upstream: Upstream,
                                 guarded: httpx.Client) -> None:
    """127.0.0.1 and localhost are two unscoped connections with their own circuits."""
    upstream.answer(503)
    guarded.get(f"http://127.0.0.1:{upstream.port}/")
    guarded.get(f"http://127.0.0.1:{upstream.port}/")
    upstream.answer(200)
    assert guarded.get(f"http://localhost:{upstream.port}/").status_code == 200
    assert {(s.identifier, s.scope) for s in brama.connections()} == {
        ("127.0.0.1", None), ("localhost", None)}
    assert brama.status("127.0.0.1").state == "open"
    assert brama.status("localhost").state == "closed"


def test_custom_connection(brama: Brama, upstream: Upstream) -> None:
    """connection(request) names the connection: here the first path segment."""
    transport = CircuitBreakerTransport(
        brama=brama, connection=lambda request: request.url.path.split("/")[1],
        max_attempts=1)
    upstream.answer(503)
    with httpx.Client(transport=transport) as http:
        http.get(f"{upstream.url}/users/1")
        upstream.answer(200)
        assert http.get(f"{upstream.url}/orders/1").status_code == 200
        with pytest.raises(CircuitOpenError):
            http.get(f"{upstream.url}/users/2")
    assert {s.identifier for s in brama.connections()} == {"users", "orders"}
    assert upstream.paths == ["/users/1", "/orders/1"]


def test_connection_that_raises_records_nothing(brama: Brama, upstream: Upstream) -> None:
    """A raising connection callable fails the request with its exception, unsent."""
    problem = LookupError("no tenant")

    def connection(request: httpx.Request) -> str:
        raise problem

    transport = CircuitBreakerTransport(brama=brama, connection=connection)
    with httpx.Client(transport=transport) as http, pytest.raises(LookupError) as caught:
        http.get(upstream.url)
    assert caught.value is problem
    assert brama.connections() == []
    assert upstream.requests == 0


def test_connection_returning_a_non_identifier(brama: Brama, upstream: Upstream) -> None:
    """A connection callable returning "" or a non-str fails with InvalidIdentifier."""
    for bad in ("", 42, ["unhashable"]):

        def connection(request: httpx.Request, bad: Any = bad) -> Any:
            return bad

        transport = CircuitBreakerTransport(brama=brama, connection=connection)
        with httpx.Client(transport=transport) as http, pytest.raises(InvalidIdentifier):
            http.get(upstream.url)
    assert brama.connections() == []
    assert upstream.requests == 0


def test_default_system(upstream: Upstream) -> None:
    """brama=None uses the default system, looked up at each request."""
    with httpx.Client(transport=CircuitBreakerTransport()) as http:
        http.get(upstream.url)
    assert brama_actors.status(HOST).total_successes == 1


def test_through_a_client(node: tuple[Brama, brama_actors.Server],
                          client: brama_actors.Client, upstream: Upstream) -> None:
    """brama= a Client: requests are admitted and recorded by the node's circuits."""
    system, _ = node
    transport = CircuitBreakerTransport(brama=client, max_attempts=2)
    upstream.answer(503)
    with httpx.Client(transport=transport) as http:
        http.get(upstream.url)
        http.get(upstream.url)
        with pytest.raises(CircuitOpenError):
            http.get(upstream.url)
    assert system.status(HOST).state == "open"
    assert upstream.requests == 2


def test_public_surface() -> None:
    """Each integration module exports exactly its documented names."""
    import brama_actors.requests
    import brama_actors.starlette

    assert sorted(brama_actors.httpx.__all__) == [
        "AsyncCircuitBreakerTransport", "CircuitBreakerTransport"]
    assert brama_actors.requests.__all__ == ["CircuitBreakerAdapter"]
    assert sorted(brama_actors.starlette.__all__) == ["install", "requires"]


# -- construction -------------------------------------------------------------------------


@pytest.mark.parametrize("statuses", [{"503"}, {503.0}, {True}, [False, 500], "503", 503,
                                      None])
def test_bad_failure_statuses_type(statuses: Any) -> None:
    """failure_statuses holding a non-int (or a bool), or not a collection: TypeError."""
    with pytest.raises(TypeError, match="failure_statuses"):
        CircuitBreakerTransport(failure_statuses=statuses)
    with pytest.raises(TypeError, match="failure_statuses"):
        AsyncCircuitBreakerTransport(failure_statuses=statuses)


def test_bad_failure_statuses_value() -> None:
    """A status code outside 100..599 is a ValueError."""
    with pytest.raises(ValueError, match="failure_statuses"):
        CircuitBreakerTransport(failure_statuses={503, 999})


@pytest.mark.parametrize("kwargs", [
    {"brama": "system"}, {"brama": object()}, {"connection": "host"},
    {"transport": object()},
])
def test_bad_arguments_type_error(kwargs: dict[str, Any]) -> None:
    """A bad brama, connection or transport is a TypeError at construction."""
    with pytest.raises(TypeError):
        CircuitBreakerTransport(**kwargs)


def test_bad_async_transport_type_error() -> None:
    """The async transport wraps only an AsyncBaseTransport."""
    with httpx.HTTPTransport() as sync_transport, \
            pytest.raises(TypeError, match="AsyncBaseTransport"):
        AsyncCircuitBreakerTransport(sync_transport)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="BaseTransport"):
        CircuitBreakerTransport(httpx.AsyncHTTPTransport())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="brama"):
        AsyncCircuitBreakerTransport(brama=1)


def test_bad_register_option() -> None:
    """A bad registration option fails at construction, not at the first request."""
    with pytest.raises(InvalidConfiguration, match="max_attempts"):
        CircuitBreakerTransport(max_attempts=-1)
    with pytest.raises(InvalidConfiguration):
        CircuitBreakerTransport(no_such_option=1)
    with pytest.raises(InvalidConfiguration, match="scope"):
        CircuitBreakerTransport(scope="eu")  # connections are unscoped
    with pytest.raises(InvalidConfiguration, match="exclude"):
        AsyncCircuitBreakerTransport(exclude=ValueError)  # a guard option, not ours


def test_close_delegates() -> None:
    """close() (and leaving the client) closes the wrapped transport."""
    inner = RecordingTransport()
    with httpx.Client(transport=CircuitBreakerTransport(inner)):
        pass
    assert inner.closed


# -- async --------------------------------------------------------------------------------


def test_async_classifies_and_opens(brama: Brama, upstream: Upstream) -> None:
    """The async transport records successes and failures and refuses once open."""

    async def main() -> None:
        transport = AsyncCircuitBreakerTransport(brama=brama, max_attempts=2)
        async with httpx.AsyncClient(transport=transport) as http:
            assert (await http.get(upstream.url)).status_code == 200
            upstream.answer(502)
            await http.get(upstream.url)
            await http.get(upstream.url)
            with pytest.raises(CircuitOpenError):
                await http.get(upstream.url)

    asyncio.run(main())
    status = brama.status(HOST)
    assert (status.state, status.total_successes, status.total_failures) == ("open", 1, 2)
    assert upstream.requests == 3


def test_async_transport_error_same_object(brama: Brama, upstream: Upstream) -> None:
    """An async transport error is re-raised as the same object and recorded."""
    inner = AsyncRecordingTransport()
    upstream.answer("close")

    async def main() -> BaseException:
        async with httpx.AsyncClient(
                transport=AsyncCircuitBreakerTransport(inner, brama=brama)) as http:
            with pytest.raises(httpx.RemoteProtocolError) as caught:
                await http.get(upstream.url)
        return caught.value

    raised = asyncio.run(main())
    assert inner.raised == [raised]
    assert inner.closed  # aclose() delegated
    assert brama.status(HOST).total_failures == 1


def test_async_half_open_trial(brama: Brama, upstream: Upstream) -> None:
    """Async: a request in flight in half_open holds the permit; a second is refused."""
    upstream.answer(503)

    async def main() -> None:
        transport = AsyncCircuitBreakerTransport(brama=brama, max_attempts=1, expiry=500)
        async with httpx.AsyncClient(transport=transport, timeout=10) as http:
            await http.get(upstream.url)
            _advance(brama, 500)
            upstream.answer("hold")
            upstream.arrived.clear()
            trial = asyncio.create_task(http.get(upstream.url))
            try:
                assert await asyncio.to_thread(upstream.arrived.wait, 10)
                with pytest.raises(CircuitOpenError, match="half-open"):
                    await http.get(upstream.url)
            finally:
                upstream.release.set()
            assert (await trial).status_code == 200

    asyncio.run(main())
    assert brama.status(HOST).state == "closed"
    assert upstream.requests == 2


def test_async_connection_that_raises_records_nothing(brama: Brama,
                                                      upstream: Upstream) -> None:
    """Async: a raising connection callable fails the request unsent, unrecorded."""
    problem = RuntimeError("no route")

    def connection(request: httpx.Request) -> str:
        raise problem

    async def main() -> BaseException:
        transport = AsyncCircuitBreakerTransport(brama=brama, connection=connection)
        async with httpx.AsyncClient(transport=transport) as http:
            with pytest.raises(RuntimeError) as caught:
                await http.get(upstream.url)
        return caught.value

    assert asyncio.run(main()) is problem
    assert brama.connections() == []
    assert upstream.requests == 0


def test_async_streamed_body_not_buffered(brama: Brama, upstream: Upstream) -> None:
    """Async: the response is handed over at its headers, the body left to the caller."""
    upstream.answer("stream")

    async def main() -> int:
        transport = AsyncCircuitBreakerTransport(brama=brama)
        async with httpx.AsyncClient(transport=transport, timeout=10) as http, \
                http.stream("GET", upstream.url) as response:
            assert not upstream.body_sent.is_set()
            upstream.release.set()
            return len(await response.aread())

    assert asyncio.run(main()) == STREAM_SIZE
    assert brama.status(HOST).total_successes == 1


# -- optional imports ---------------------------------------------------------------------


def test_import_brama_actors_imports_no_integration_library() -> None:
    """import brama_actors loads none of httpx, requests, starlette, fastapi."""
    code = ("import sys, brama_actors\n"
            "print(sorted(m for m in ('httpx', 'requests', 'starlette', 'fastapi')"
            " if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("module", "library", "others"), [
    ("brama_actors.httpx", "httpx", ("requests", "starlette")),
    ("brama_actors.requests", "requests", ("httpx", "starlette")),
    ("brama_actors.starlette", "starlette", ("httpx", "requests")),
])
def test_each_integration_imports_only_its_library(module: str, library: str,
                                                   others: tuple[str, ...]) -> None:
    """Importing one integration imports its own library and not the others'."""
    code = (f"import sys, {module}\n"
            f"print({library!r} in sys.modules, [m for m in {others!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True, cwd=ROOT)
    assert done.stdout.strip() == "True []"


def test_both_transports_time_their_requests(brama: Brama, upstream: Upstream) -> None:
    """Durations reach the slow-call rule and the duration observers from the sync and
    the async transport alike (the async one judges responses on the loop)."""
    from brama_actors import _durations

    seen: list[Any] = []
    _durations.OBSERVERS.append(seen.append)
    try:
        with httpx.Client(transport=CircuitBreakerTransport(brama=brama)) as http:
            http.get(upstream.url)
        upstream.answer(503)

        async def main() -> None:
            async with httpx.AsyncClient(
                    transport=AsyncCircuitBreakerTransport(brama=brama)) as http:
                await http.get(upstream.url)

        asyncio.run(main())
    finally:
        _durations.OBSERVERS.remove(seen.append)
    assert [(t[0], t[2]) for t in seen] == [(HOST, "success"), (HOST, "failure")]
