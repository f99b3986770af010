"""The default system and the module-level functions that act on it.

Started lazily on first use, stopped at interpreter exit. Our threads are daemon threads,
so a program that forgets to stop still exits: CPython joins non-daemon threads *before*
it runs ``atexit`` handlers (docs/design-notes.md).
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from brama_actors import _guard
from brama_actors._delivery._subscription import Subscription
from brama_actors._errors import BramaError
from brama_actors._events import Event, EventType
from brama_actors._guard import Guard, GuardBlock
from brama_actors._status import ConnectionStatus
from brama_actors._system._brama import Brama

if TYPE_CHECKING:
    from brama_actors._remote._server import Server

__all__ = [
    "available", "close_circuit", "configure", "connections", "drain", "failure", "get",
    "guard", "open_circuit", "register", "reset_circuit", "serve", "start", "status",
    "stop", "subscribe", "success", "unregister", "unsubscribe",
]

_lock = threading.RLock()
_default: Brama | None = None


def get() -> Brama:
    """The running default system, started on first use."""
    global _default
    brama = _default
    if brama is not None and not brama.stopped:
        return brama
    with _lock:
        if _default is None or _default.stopped:
            _default = Brama.start()
        return _default


# Guards with brama=None find the default system through this (they sit below us).
_guard.set_default_system(get)


def start(**config: Any) -> Brama:
    """Start the default system explicitly (raises ``BramaError`` if it runs).

    Raises:
        BramaError: it is already running.
        InvalidConfiguration: a bad option.
    """
    global _default
    with _lock:
        if _default is not None and not _default.stopped:
            raise BramaError("the default brama_actors system is already running")
        _default = Brama.start(**config)
        return _default


def stop() -> None:
    """Stop the default system; the next module-level call starts a fresh one."""
    global _default
    with _lock:
        brama, _default = _default, None
    if brama is not None:
        brama.stop()


atexit.register(stop)


def register(identifier: str, **options: Any) -> ConnectionStatus:
    """``Brama.register`` on the default system."""
    return get().register(identifier, **options)


def unregister(identifier: str, *, scope: str | None = None) -> bool:
    """``Brama.unregister`` on the default system."""
    return get().unregister(identifier, scope=scope)


def available(identifier: str, *, scope: str | None = None) -> bool:
    """``Brama.available`` on the default system."""
    # Inlined lookup: this is the hot path (benchmarked against a bare call).
    brama = _default
    if brama is not None:
        try:
            view = brama._authority.views.get(
                identifier if scope is None else (scope, identifier))
        except (TypeError, BramaError):
            view = None
        if view is not None and type(identifier) is str:
            return view.available
    return get().available(identifier, scope=scope)


def success(identifier: str, *, scope: str | None = None,
            metadata: Mapping[str, Any] | None = None, duration: float | None = None) -> None:
    """``Brama.success`` on the default system."""
    get().success(identifier, scope=scope, metadata=metadata, duration=duration)


def failure(identifier: str, *, scope: str | None = None, reason: Any = None,
            metadata: Mapping[str, Any] | None = None, duration: float | None = None) -> None:
    """``Brama.failure`` on the default system."""
    get().failure(identifier, scope=scope, reason=reason, metadata=metadata,
                  duration=duration)


def status(identifier: str, *, scope: str | None = None) -> ConnectionStatus:
    """``Brama.status`` on the default system."""
    return get().status(identifier, scope=scope)


def connections(**kwargs: Any) -> list[ConnectionStatus]:
    """``Brama.connections`` on the default system (``scope=`` optional)."""
    return get().connections(**kwargs)


def open_circuit(identifier: str, *, scope: str | None = None, reason: Any = None,
                 expiry: int | None = None) -> None:
    """``Brama.open_circuit`` on the default system."""
    get().open_circuit(identifier, scope=scope, reason=reason, expiry=expiry)


def close_circuit(identifier: str, *, scope: str | None = None, reason: Any = None) -> None:
    """``Brama.close_circuit`` on the default system."""
    get().close_circuit(identifier, scope=scope, reason=reason)


def reset_circuit(identifier: str, *, scope: str | None = None, reason: Any = None) -> None:
    """``Brama.reset_circuit`` on the default system."""
    get().reset_circuit(identifier, scope=scope, reason=reason)


def configure(identifier: str | None = None, *, scope: str | None = None,
              **options: Any) -> None:
    """``Brama.configure`` on the default system."""
    get().configure(identifier, scope=scope, **options)


def subscribe(*, events: Iterable[EventType | str] | None = None,
              connection: str | None = None, scope: str | None = None,
              filter: Callable[[Event], bool] | None = None,
              subscriber: Any = None, handler: Any = None, batch_size: int | None = None,
              batch_timeout: int | None = None, max_pending: int = 10_000) -> Subscription:
    """``Brama.subscribe`` on the default system."""
    return get().subscribe(
        events=events, connection=connection, scope=scope, filter=filter,
        subscriber=subscriber, handler=handler, batch_size=batch_size,
        batch_timeout=batch_timeout, max_pending=max_pending)


def unsubscribe(subscription: Subscription | None = None, **filters: Any) -> Any:
    """``Brama.unsubscribe`` on the default system."""
    return get().unsubscribe(subscription, **filters)


def guard(identifier: str, *, scope: str | None = None,
          error_handler: Callable[[Any], Any] | None = None, register: bool = True,
          exclude: Any = (), record: Any = None, timeout: int | None = None,
          **register_options: Any) -> GuardBlock:
    """``Brama.guard`` on the default system (looked up when the block is entered)."""
    return GuardBlock(Guard(identifier, scope=scope, error_handler=error_handler,
                            register=register, exclude=exclude, record=record,
                            timeout=timeout, **register_options))


def serve(address: Any = None, authkey: bytes | None = None,
          allow_remote: bool = False) -> Server:
    """``Brama.serve`` on the default system."""
    return get().serve(address, authkey, allow_remote)


def drain(timeout: float = 1.0) -> None:
    """``Brama.drain`` on the default system."""
    get().drain(timeout)
