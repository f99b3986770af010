"""brama_actors.requests against a real local HTTP server (API.md section 15)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter

import brama_actors
from brama_actors import Brama, CircuitOpenError, InvalidConfiguration
from brama_actors.requests import CircuitBreakerAdapter
from brama_actors.testing import ManualClock
from tests.conftest import collect
from tests.http_server import STREAM_SIZE, Upstream, serve

HOST = "127.0.0.1"


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A real HTTP server on 127.0.0.1, stopped (threads joined) after the test."""
    with serve() as server:
        yield server


def _session(adapter: HTTPAdapter) -> requests.Session:
    session = requests.Session()
    session.mount("http://", adapter)
    return session


@pytest.fixture
def session(brama: Brama) -> Iterator[requests.Session]:
    """A session whose http:// adapter guards each host (opens after 2 failures)."""
    adapter = CircuitBreakerAdapter(brama=brama,
                                    register_options={"max_attempts": 2, "expiry": 1_000})
    with _session(adapter) as http:
        yield http


class _RecordingHTTPAdapter(HTTPAdapter):
    """The real HTTPAdapter, remembering what its ``send`` raised."""

    raised: list[BaseException]

    def send(self, request: requests.PreparedRequest, *args: Any,
             **kwargs: Any) -> requests.Response:
        try:
            return super().send(request, *args, **kwargs)
        except BaseException as exc:
            self.raised.append(exc)
            raise


class RecordingAdapter(CircuitBreakerAdapter, _RecordingHTTPAdapter):
    """CircuitBreakerAdapter whose ``super().send`` is the recording one (MRO)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.raised = []


def _advance(brama: Brama, ms: int) -> None:
    clock = brama.clock
    assert isinstance(clock, ManualClock)
    clock.advance(ms)


def test_success_response_returned_unchanged(brama: Brama, upstream: Upstream,
                                             session: requests.Session) -> None:
    """A 200 is a success and reaches the caller as the server sent it."""
    response = session.get(f"{upstream.url}/ok", timeout=10)
    assert response.status_code == 200
    assert response.text == "answer 200\n"
    status = brama.status(HOST)
    assert (status.total_successes, status.total_failures, status.scope) == (1, 0, None)
    assert (status.max_attempts, status.expiry) == (2, 1_000)  # register_options


def test_failure_status_and_other_statuses(brama: Brama, upstream: Upstream,
                                           session: requests.Session) -> None:
    """503 is a failure (reason "HTTP 503"); 404 is a success."""
    inbox = brama.subscribe(events=["failure"])
    upstream.answer(503)
    assert session.get(upstream.url, timeout=10).status_code == 503
    upstream.answer(404)
    assert session.get(upstream.url, timeout=10).status_code == 404
    status = brama.status(HOST)
    assert (status.total_successes, status.total_failures) == (1, 1)
    brama.drain()
    assert [e.data["reason"] for e in collect(inbox)] == ["HTTP 503"]


def test_opens_and_refuses_without_sending(brama: Brama, upstream: Upstream,
                                           session: requests.Session) -> None:
    """After max_attempts failures a request raises CircuitOpenError and never leaves."""
    upstream.answer(500)
    session.get(upstream.url, timeout=10)
    session.get(upstream.url, timeout=10)
    with pytest.raises(CircuitOpenError) as caught:
        session.get(upstream.url, timeout=10)
    assert upstream.requests == 2
    assert caught.value.retry_after == 1_000


def test_refusal_counts_in_total_rejections(brama: Brama, upstream: Upstream,
                                            session: requests.Session) -> None:
    """A refused request counts in status().total_rejections (API.md sections 14, 15)."""
    upstream.answer(503)
    session.get(upstream.url, timeout=10)
    session.get(upstream.url, timeout=10)
    with pytest.raises(CircuitOpenError):
        session.get(upstream.url, timeout=10)
    assert brama.status(HOST).total_rejections == 1


def test_half_open_request_takes_the_trial_permit(brama: Brama, upstream: Upstream,
                                                  session: requests.Session) -> None:
    """In half_open a request in flight holds the permit; it is given back after."""
    upstream.answer(503)
    session.get(upstream.url, timeout=10)
    session.get(upstream.url, timeout=10)
    _advance(brama, 1_000)
    assert brama.status(HOST).state == "half_open"
    upstream.answer("hold")
    upstream.arrived.clear()
    results: list[int] = []
    trial = threading.Thread(
        target=lambda: results.append(session.get(upstream.url, timeout=10).status_code))
    trial.start()
    try:
        assert upstream.arrived.wait(10)
        seen = upstream.requests
        with pytest.raises(CircuitOpenError, match="half-open"):
            session.get(upstream.url, timeout=10)
        assert upstream.requests == seen
    finally:
        upstream.release.set()
        trial.join(10)
    assert results == [200]
    assert brama.status(HOST).state == "closed"


def test_transport_error_reraised_as_same_object(brama: Brama, upstream: Upstream) -> None:
    """What HTTPAdapter.send raised propagates as the same object, recorded as a failure."""
    adapter = RecordingAdapter(brama=brama)
    upstream.answer("close")
    with _session(adapter) as http, pytest.raises(requests.ConnectionError) as caught:
        http.get(upstream.url, timeout=10)
    assert adapter.raised == [caught.value]
    assert brama.status(HOST).total_failures == 1


def test_streamed_body_not_buffered(brama: Brama, upstream: Upstream,
                                    session: requests.Session) -> None:
    """With stream=True the response comes back at its headers, its body unread."""
    upstream.answer("stream")
    with session.get(upstream.url, stream=True, timeout=10) as response:
        assert not upstream.body_sent.is_set()
        assert brama.status(HOST).total_successes == 1
        upstream.release.set()
        assert len(response.content) == STREAM_SIZE


def test_one_connection_per_host(brama: Brama, upstream: Upstream,
                                 session: requests.Session) -> None:
    """127.0.0.1 and localhost are two unscoped connections."""
    upstream.answer(503)
    session.get(f"http://127.0.0.1:{upstream.port}/", timeout=10)
    session.get(f"http://127.0.0.1:{upstream.port}/", timeout=10)
    upstream.answer(200)
    assert session.get(f"http://localhost:{upstream.port}/", timeout=10).status_code == 200
    assert {(s.identifier, s.scope, s.state) for s in brama.connections()} == {
        ("127.0.0.1", None, "open"), ("localhost", None, "closed")}


def test_custom_connection_gets_the_prepared_request(brama: Brama,
                                                     upstream: Upstream) -> None:
    """connection is called with the PreparedRequest."""
    seen: list[Any] = []

    def connection(request: requests.PreparedRequest) -> str:
        seen.append(request)
        return str(request.headers["X-Service"])

    with _session(CircuitBreakerAdapter(brama=brama, connection=connection)) as http:
        http.get(upstream.url, headers={"X-Service": "billing"}, timeout=10)
    assert isinstance(seen[0], requests.PreparedRequest)
    assert [s.identifier for s in brama.connections()] == ["billing"]


def test_connection_that_raises_records_nothing(brama: Brama, upstream: Upstream) -> None:
    """A raising connection callable fails the request with its exception, unsent."""
    problem = KeyError("X-Service")

    def connection(request: requests.PreparedRequest) -> str:
        raise problem

    with _session(CircuitBreakerAdapter(brama=brama, connection=connection)) as http, \
            pytest.raises(KeyError) as caught:
        http.get(upstream.url, timeout=10)
    assert caught.value is problem
    assert brama.connections() == []
    assert upstream.requests == 0


def test_http_adapter_kwargs_pass_through() -> None:
    """Other keyword arguments are HTTPAdapter's own."""
    adapter = CircuitBreakerAdapter(pool_connections=3, pool_maxsize=4, max_retries=2)
    assert adapter.max_retries.total == 2
    assert adapter._pool_maxsize == 4
    adapter.close()


def test_default_system(upstream: Upstream) -> None:
    """brama=None uses the default system."""
    with _session(CircuitBreakerAdapter()) as http:
        http.get(upstream.url, timeout=10)
    assert brama_actors.status(HOST).total_successes == 1


@pytest.mark.parametrize("kwargs", [
    {"failure_statuses": {"503"}}, {"failure_statuses": [True]}, {"failure_statuses": 503},
    {"brama": "default"}, {"connection": 1}, {"register_options": [("max_attempts", 2)]},
])
def test_bad_arguments_type_error(kwargs: dict[str, Any]) -> None:
    """Bad failure_statuses, brama, connection or register_options: TypeError."""
    with pytest.raises(TypeError):
        CircuitBreakerAdapter(**kwargs)


def test_bad_values() -> None:
    """A status out of range is a ValueError; a bad option an InvalidConfiguration."""
    with pytest.raises(ValueError, match="failure_statuses"):
        CircuitBreakerAdapter(failure_statuses={42})
    with pytest.raises(InvalidConfiguration, match="expiry"):
        CircuitBreakerAdapter(register_options={"expiry": 0})
