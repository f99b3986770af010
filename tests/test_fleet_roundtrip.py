"""One call, one deadline, one application (API.md section 16, docs/fleet.md "Failure
modes"): a step that changes a circuit carries a request id, and the script applies a
request once.
"""

from __future__ import annotations

from brama_actors import Brama
from brama_actors._authority._fleet._link import RECORD_TIMEOUTS
from tests.fleet_helpers import WAIT, namespace
from tests.redis_server import RedisServer


def _start(url: str, ns: str, timeout_ms: int = 200) -> Brama:
    """A fleet system with its ticker stopped (its lease given back; no expiry or sweep
    is needed here), so the test's calls are the only ones on the link's command
    connections: none of the ticker's can take a fault meant for them."""
    brama = Brama.start(fleet=url, fleet_namespace=ns, fleet_timeout=timeout_ms)
    brama._authority.ticker.stop(WAIT)  # type: ignore[union-attr]
    return brama


def test_a_request_record_is_kept_a_few_timeouts_only(redis_server: RedisServer) -> None:
    """Each recorded step leaves one key of its own under the namespace's hash tag,
    expiring within RECORD_TIMEOUTS x fleet_timeout: records are bounded by time, not by
    the systems that came and went. Reads and the ticker's idempotent ops record none."""
    admin = redis_server.client()
    ns = namespace()
    timeout_ms = 300
    brama = _start(redis_server.url, ns, timeout_ms)
    try:
        brama.register("db", max_attempts=5)
        brama.failure("db")
        brama.failure("db")
        records = list(admin.scan_iter("{" + ns + "}:r:*"))
        assert len(records) == 3  # register, two failures; the snapshot none
        for key in records:
            assert 0 < admin.pttl(key) <= RECORD_TIMEOUTS * timeout_ms
    finally:
        brama.stop()
