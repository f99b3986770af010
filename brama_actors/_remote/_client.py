"""A client of a node in another process: ``connect()`` and the ``Client`` it returns.

It offers the methods of a local system with the same results and errors (they are the
same methods: ``_system._facade.Facade``), over a node authority
(``_authority._node``): ``available()`` from a pushed replica, ``failure()`` applied by
the node before it returns, subscriptions delivered in this process.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from brama_actors._authority._node import NodeAuthority
from brama_actors._delivery._runners import close_runners
from brama_actors._errors import InvalidConfiguration, NodeUnavailable
from brama_actors._remote._link import Link
from brama_actors._remote._wire import Address, check_address
from brama_actors._system._facade import Facade, SystemAPI

__all__ = ["Client", "connect"]

_client_ids = itertools.count(1)


class Client(Facade):
    """A connection to a node; create it with ``brama_actors.connect`` or ``spawn``.

    Attributes:
        address: the node's address.
        stale_after: ms ``available()`` answers from the last known state once the
            link is lost.
        when_stale: ``"allow"`` (fail open) or ``"deny"`` after that.
    """

    _authority: NodeAuthority

    def __init__(self, address: Any, authkey: bytes, stale_after: int = 5_000,
                 when_stale: str = "allow", *, _process: Any = None,
                 _control: Any = None,
                 _monotonic: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(authkey, bytes) or not authkey:
            raise TypeError("authkey must be non-empty bytes")
        if type(stale_after) is bool or not isinstance(stale_after, int) or stale_after < 0:
            raise InvalidConfiguration(f"stale_after must be an int >= 0, got {stale_after!r}")
        if when_stale not in ("allow", "deny"):
            raise InvalidConfiguration(
                f"when_stale must be 'allow' or 'deny', got {when_stale!r}")
        super().__init__()
        self.address: Address = check_address(address, allow_remote=True)
        self.stale_after = stale_after
        self.when_stale = when_stale
        self._handler_name = self.name = f"brama-client-{next(_client_ids)}"
        self._process = _process
        self._control = _control
        self._closed = False
        self._authority = NodeAuthority(self.address, authkey, self.name, stale_after,
                                        when_stale, _monotonic)
        self._authority.link.connect()

    @property
    def _link(self) -> Link:
        return self._authority.link

    def _check_running(self) -> None:
        if self._closed:
            raise NodeUnavailable("this client is closed")

    # -- lifecycle -----------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Disconnect (the node drops this client's subscriptions); idempotent.

        Afterwards ``available()`` answers from the last known state for
        ``stale_after`` ms, then per ``when_stale``; other calls raise
        ``NodeUnavailable``. A client made by ``spawn`` also stops its node process.
        """
        if self._closed:
            return
        self._closed = True
        self._authority.close(timeout)
        close_runners(self._runners, timeout)
        if self._process is not None:
            try:
                self._control.send("stop")
            except (OSError, ValueError):
                pass
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout)
            self._control.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self.connected else "lost")
        return f"<Client {self.address!r} {state}>"

    @property
    def connected(self) -> bool:
        """True while the link to the node is up and the replica is in sync."""
        return not self._closed and self._authority.connected

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the client is connected and its replica synced; False on timeout
        (at once once closed)."""
        if self._closed:
            return False
        return self._authority.wait_connected(timeout)


def connect(address: Any, authkey: bytes = b"", stale_after: int = 5_000,
            when_stale: str = "allow") -> Client:
    """Connect to a node served by ``brama.serve()``.

    Raises:
        TypeError: no ``authkey`` (it is required: the node's key, non-empty bytes).
        AuthenticationFailed: the node refused the authkey.
        NodeUnavailable: nothing answers at ``address``.
        InvalidConfiguration: a bad ``stale_after`` or ``when_stale``.
    """
    return Client(address, authkey, stale_after, when_stale)


if TYPE_CHECKING:  # mypy checks that both systems offer everything SystemAPI names
    from brama_actors._system._brama import Brama

    def _both_are_systems(local: Brama, client: Client) -> tuple[SystemAPI, SystemAPI]:
        return local, client
