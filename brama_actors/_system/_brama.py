"""``Brama``: one running system, and how it starts and stops.

The public methods live in :class:`~brama_actors._system._facade.Facade` (shared with
``Client``); this module builds the system in order (context, supervisor, event hub,
authority: everything an actor may read exists before it starts) and tears it down so
that nothing of it keeps running.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from pykka import ActorDeadError, ActorRef

from brama_actors._authority._local import LocalAuthority
from brama_actors._config import DEFAULTS, GLOBAL_OPTIONS, check_global, validate_options
from brama_actors._delivery._hub import Delivery
from brama_actors._delivery._runners import RUNNER_STOP_WAIT, close_runners
from brama_actors._errors import InvalidConfiguration, SystemStopped
from brama_actors._keys import check_key
from brama_actors._runtime import Clock, SystemClock
from brama_actors._runtime._context import Context
from brama_actors._runtime._supervisor import Crashed, Supervisor
from brama_actors._status import FleetStatus
from brama_actors._system._facade import Facade

if TYPE_CHECKING:
    from brama_actors._authority._fleet import FleetAuthority
    from brama_actors._authority._fleet._options import FleetOptions
    from brama_actors._remote._server import Server

__all__ = ["Brama", "running"]

logger = logging.getLogger("brama_actors")

#: Every system not yet stopped, so tests and atexit can find them.
running: weakref.WeakSet[Brama] = weakref.WeakSet()

_START_TOKEN = object()


class Brama(Facade):
    """One running brama_actors system; create it with :meth:`Brama.start`.

    Several systems can run in one process; they never see each other's connections,
    subscriptions or events.
    """

    _authority: LocalAuthority | FleetAuthority
    _context: Context
    _delivery: Delivery
    _supervisor: ActorRef[Supervisor]

    def __init__(self, *, _token: object = None, **_: Any) -> None:
        if _token is not _START_TOKEN:
            raise TypeError("create a system with Brama.start(**config)")
        super().__init__()
        self._stopped = False
        self._down = threading.Event()
        self._teardown_thread: threading.Thread | None = None
        self._parent: ActorRef[Any] | None = None
        self._servers: list[Server] = []

    # -- lifecycle -----------------------------------------------------------------------
    @classmethod
    def start(cls, *, clock: Clock | None = None, parent: ActorRef[Any] | None = None,
              fleet: Any = None, **config: Any) -> Brama:
        """Start a system.

        Args:
            clock: the clock every timestamp, expiry and sweep uses (default: system).
            parent: an actor told ``("brama_stopped", brama)`` / ``("brama_down", brama,
                reason)`` when the system ends.
            fleet: a Redis URL (on a Redis Cluster, of any node), a ``redis.Redis`` or a
                ``redis.cluster.RedisCluster``: share every connection with the systems
                started on the same Redis and ``fleet_namespace`` (docs/fleet.md), with
                ``fleet_namespace``, ``fleet_timeout``, ``when_unreachable``,
                ``stale_after`` and ``when_stale`` among ``config``.
            **config: the system's options (docs/circuit-rules.md#configuration).

        Raises:
            InvalidConfiguration: an unknown option or bad value; ``clock=`` with
                ``fleet=``.
        """
        fleet_options = cls._fleet_options(fleet, clock, config)
        explicit = validate_options(config, GLOBAL_OPTIONS)
        check_global(explicit)
        if clock is None:
            clock = SystemClock()
        elif not isinstance(clock, Clock):
            raise InvalidConfiguration(f"clock must be a brama_actors Clock, got {clock!r}")
        if parent is not None and not isinstance(parent, ActorRef):
            raise InvalidConfiguration(f"parent must be a pykka ActorRef, got {parent!r}")
        brama = cls(_token=_START_TOKEN)
        brama._parent = parent
        brama._build(clock, explicit, fleet_options)
        running.add(brama)
        return brama

    @staticmethod
    def _fleet_options(fleet: Any, clock: Clock | None,
                       config: dict[str, Any]) -> FleetOptions | None:
        """Take the fleet options out of ``config`` and check them (redis loads here)."""
        names = ("fleet_namespace", "fleet_timeout", "when_unreachable", "stale_after",
                 "when_stale")
        given = {name: config.pop(name) for name in names if name in config}
        if fleet is None:
            if given:
                raise InvalidConfiguration(
                    f"{', '.join(sorted(given))} need fleet= (a Redis URL or client)")
            return None
        if clock is not None:
            raise InvalidConfiguration(
                f"clock= cannot be used with fleet=: a fleet's time is its Redis server's "
                f"clock, got clock={clock!r}")
        from brama_actors._authority._fleet._options import check_fleet_options

        return check_fleet_options(fleet, given)

    def _build(self, clock: Clock, explicit: dict[str, Any],
               fleet: FleetOptions | None = None) -> None:
        """Build the parts in dependency order; each actor starts after what it reads."""
        context = self._context = Context(clock, {**DEFAULTS, **explicit})
        self._handler_name = context.name
        # The supervisor and the hub refer to each other only through these closures,
        # which run on a crash, long after both exist.
        self._supervisor = Supervisor.start(
            context, self._give_up, lambda *call: self._delivery.fire(*call))  # noqa: PLW0108
        self._delivery = Delivery(context, self._event_manager_crashed,
                                  lambda: self._authority.sync_supervisor())  # noqa: PLW0108
        if fleet is not None:
            from brama_actors._authority._fleet import FleetAuthority

            # Its inactive cleanup runs on the ticker's thread (_fleet/_sweep.py).
            self._authority = FleetAuthority(context, self._delivery, self._supervisor,
                                             explicit, fleet)
        else:
            self._authority = LocalAuthority(context, self._delivery, self._supervisor,
                                             explicit)
            self._authority.arm_sweep()
        try:
            self._delivery.log_transitions(context.config["log_transitions"])
        except BaseException:
            self.stop()  # nothing half-started outlives a failed start
            raise

    def _event_manager_crashed(self, reason: str) -> None:
        try:
            self._supervisor.tell(Crashed("event_manager", None, None, reason))
        except ActorDeadError:
            pass  # stopping

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return (f"<Brama {self._context.name} {state}, "
                f"{len(self._authority.views)} connection(s)>")

    @property
    def clock(self) -> Clock:
        """The clock of this system."""
        return self._context.clock

    def fleet_status(self) -> FleetStatus | None:
        """The link to the fleet's Redis (``None`` for a system without ``fleet=``)."""
        authority = self._authority
        if isinstance(authority, LocalAuthority):
            return None
        link = authority.link
        return FleetStatus(link.connected, link.since, authority.options.namespace)

    @property
    def supervisor(self) -> ActorRef[Any]:
        """The system supervisor's Pykka ``ActorRef``."""
        return self._supervisor

    @property
    def stopped(self) -> bool:
        """True once ``stop()`` was called (or the supervisor gave up)."""
        return self._stopped

    def _check_running(self) -> None:
        if self._stopped:
            raise SystemStopped("this Brama system is stopped")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every actor and thread of this system; idempotent.

        Calls racing with ``stop()`` complete normally or raise ``SystemStopped``. A
        handler still blocked in user code after about 1 s keeps its daemon thread
        until it returns, and runs nothing of the system afterwards.
        """
        self._shutdown(None, timeout)

    def _mark_stopped(self) -> bool:
        """Refuse calls from now on; True for the caller that did it first."""
        with self._lock:
            if self._stopped:
                return False
            self._stopped = True
            self._context.stopping = True
            self._authority.mark_stopped()
            return True

    def _shutdown(self, reason: str | None, timeout: float = 10.0) -> None:
        if self._mark_stopped():
            self._teardown(reason, timeout)
        else:
            # Someone else (e.g. the supervisor giving up) is tearing down: wait for it,
            # so that stop() returning still means no thread is left.
            self._down.wait(timeout)
            thread = self._teardown_thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)

    def _give_up(self, reason: str) -> None:
        """Stop the system from another thread (actors must not join their own pool)."""
        logger.error("brama_actors supervisor gives up: %s; stopping the system", reason)
        # Calls are refused at once; the teardown runs on its own thread because an
        # actor cannot wait for the pool it runs on to end.
        if self._mark_stopped():
            thread = threading.Thread(target=self._teardown, args=(reason,),
                                      name=f"{self._context.name}-give-up", daemon=True)
            self._teardown_thread = thread
            thread.start()

    def _teardown(self, reason: str | None, timeout: float = 10.0) -> None:
        context = self._context
        deadline = time.monotonic() + timeout
        for server in self._servers:
            server.close()
        self._delivery.release_paced()
        context.scheduler.stop(timeout)
        try:
            self._authority.close()
        except Exception:  # e.g. a fleet's Redis answering errors: stop the rest anyway
            logger.exception("closing the authority of %s failed", context.name)
        futures = [self._supervisor.stop(block=False), self._delivery.stop()]
        for future in futures:
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                logger.warning("an actor of %s did not stop in time", context.name)
                break
        context.pool.shutdown(max(0.0, deadline - time.monotonic()))
        runners = list(self._runners)
        telemetry = self._delivery.telemetry_target
        if telemetry is not None:
            runners.append(telemetry)
        runners.extend(self._delivery.log_targets)
        # Handler runners finish what they are doing; one blocked in user code cannot be
        # stopped (a daemon thread), so waiting is bounded and it is then abandoned.
        blocked = close_runners(runners, max(0.0, deadline - time.monotonic()))
        if blocked:
            logger.warning("%s: %d handler(s) still blocked in user code after %.1f s; "
                           "their daemon threads end when the handlers return and run "
                           "nothing of the system meanwhile", context.name, blocked,
                           RUNNER_STOP_WAIT)
        self._runners.clear()
        running.discard(self)
        self._down.set()
        parent = self._parent
        if parent is not None:
            message: tuple[Any, ...] = (
                ("brama_stopped", self) if reason is None else ("brama_down", self, reason)
            )
            try:
                parent.tell(message)
            except ActorDeadError:
                logger.warning("parent actor of %s is gone; not told %s", context.name,
                               message[0])
        elif reason is not None:
            logger.error("%s stopped: %s", context.name, reason)

    # -- several processes ---------------------------------------------------------------
    def serve(self, address: Any = None, authkey: bytes | None = None,
              allow_remote: bool = False) -> Server:
        """Serve this system to other processes (see ``brama_actors.connect``).

        Args:
            address: a Unix socket path, or a ``(host, port)`` on loopback; ``None``
                makes a socket in a fresh private (0700) directory.
            authkey: the shared secret; ``None`` generates 32 random bytes.
            allow_remote: allow a non-loopback host.

        Raises:
            ValueError: a non-loopback host without ``allow_remote``.
            TypeError: a bad address or authkey.
        """
        # The socket layer loads only when a system is served (not on import).
        from brama_actors._remote._server import Server

        self._check_running()
        server = Server(self, self._authority, self._context.name, address, authkey,
                        allow_remote)
        with self._lock:
            stopped = self._stopped
            if not stopped:
                self._servers.append(server)
        if stopped:
            server.close()
            raise SystemStopped("this Brama system is stopped")
        return server

    # -- test seams ----------------------------------------------------------------------
    def _inject_crash(self, identifier: str, *, scope: str | None = None, times: int = 1) -> None:
        if isinstance(self._authority, LocalAuthority):
            self._authority.inject_crash(check_key(identifier, scope), times)

    def _inject_event_manager_crash(self, times: int = 1) -> None:
        self._delivery.inject_crash(times)
