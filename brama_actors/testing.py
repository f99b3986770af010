"""Helpers for testing code that uses brama_actors, without sleeping.

* ``ManualClock``: time moves only when the test calls ``advance(ms)``.
* ``set_state``, ``add_failures`` / ``simulate_failures``, ``simulate_recovery``: put a
  circuit where the test needs it, through the real transitions and their events.
* ``wait_for_event``: subscribe, then wait for one event.
* ``inject_crash``: the seam through which tests make a connection actor crash.
* The pytest plugin (``brama_actors.pytest_plugin``) adds a ``brama`` fixture.
"""

from __future__ import annotations

import queue
from typing import Any

from brama_actors._events import Event, EventType
from brama_actors._keys import check_key
from brama_actors._runtime._clock import Clock, ManualClock, SystemClock
from brama_actors._status import CircuitState
from brama_actors._system import _default
from brama_actors._system._brama import Brama

__all__ = [
    "Clock",
    "ManualClock",
    "SystemClock",
    "add_failures",
    "inject_crash",
    "inject_event_manager_crash",
    "set_state",
    "simulate_failures",
    "simulate_recovery",
    "wait_for_event",
]


def _system(brama: Brama | None) -> Brama:
    return _default.get() if brama is None else brama


def _expire_now(brama: Brama, identifier: str, scope: str | None) -> None:
    """Move an open circuit to half_open as if its deadline had passed."""
    brama._authority.expire_now(check_key(identifier, scope))


def set_state(identifier: str, state: CircuitState | str, *, scope: str | None = None,
              brama: Brama | None = None) -> None:
    """Force a circuit into ``state`` through the real transitions and their events.

    ``"open"`` opens it (``circuit_opened``, ``state_change``), ``"closed"`` closes it
    (``circuit_closed``, ``state_change``), ``"half_open"`` opens it if needed and then
    expires the opening (``expiry``, ``circuit_half_opened``, ``state_change``).

    Raises:
        ValueError: ``state`` is not a circuit state.
        ConnectionNotFound: the connection is not registered.
    """
    try:
        target = CircuitState(state)
    except ValueError:
        raise ValueError(
            f"state must be 'closed', 'open' or 'half_open', got {state!r}") from None
    system = _system(brama)
    current = system.status(identifier, scope=scope).state
    if target is current:
        return
    if target is CircuitState.CLOSED:
        system.close_circuit(identifier, scope=scope, reason="set_state")
    elif target is CircuitState.OPEN:
        system.open_circuit(identifier, scope=scope, reason="set_state")
    else:
        if current is CircuitState.CLOSED:
            system.open_circuit(identifier, scope=scope, reason="set_state")
        _expire_now(system, identifier, scope)


def add_failures(identifier: str, count: int, *, scope: str | None = None,
                 brama: Brama | None = None, reason: Any = "simulated failure") -> None:
    """Report ``count`` failures, exactly as ``failure()`` would.

    Raises:
        ValueError: ``count`` is not an int >= 0.
        ConnectionNotFound: the connection is not registered.
    """
    if type(count) is bool or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be an int >= 0, got {count!r}")
    system = _system(brama)
    system.status(identifier, scope=scope)  # unknown connection: raise, whatever the count
    for _ in range(count):
        system.failure(identifier, scope=scope, reason=reason)


simulate_failures = add_failures


def simulate_recovery(identifier: str, *, scope: str | None = None,
                      brama: Brama | None = None) -> None:
    """Recover a circuit: an open one first goes half_open, then a success closes it.

    Raises:
        ConnectionNotFound: the connection is not registered.
    """
    system = _system(brama)
    _expire_now(system, identifier, scope)
    # Synchronous, unlike success(): the circuit is closed when this returns.
    system._authority.succeed_now(check_key(identifier, scope))


def wait_for_event(event_type: EventType | str, *, connection: str | None = None,
                   scope: str | None = None, timeout: float = 1.0,
                   brama: Brama | None = None) -> Event:
    """Subscribe, then wait for the next matching event.

    Raises:
        ValueError: an unknown event type.
        TimeoutError: nothing arrived within ``timeout`` seconds.
    """
    system = _system(brama)
    with system.subscribe(events=[event_type], connection=connection, scope=scope) as sub:
        try:
            event = sub.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"no {EventType(event_type).value!r} event within {timeout} s") from None
    assert isinstance(event, Event)
    return event


def inject_crash(identifier: str, *, scope: str | None = None, times: int = 1,
                 brama: Brama | None = None) -> None:
    """Make the connection's actor crash at the start of its next ``times`` messages.

    Each crash is handled like a real one: the supervisor restarts the actor from its
    last published status, and the message it crashed on is retried by its caller
    (``ask``-style calls) or lost (a ``success()`` report, which is fire-and-forget).

    Raises:
        ValueError: ``times`` is not an int >= 1.
        ConnectionNotFound: the connection is not registered.
    """
    if type(times) is bool or not isinstance(times, int) or times < 1:
        raise ValueError(f"times must be an int >= 1, got {times!r}")
    _system(brama)._inject_crash(identifier, scope=scope, times=times)


def inject_event_manager_crash(*, times: int = 1, brama: Brama | None = None) -> None:
    """Make the system's event manager crash at the start of its next ``times`` messages.

    The supervisor restarts it with its subscription table; critical events of the
    message it crashed on (and of pending batches) are delivered after the restart.

    Raises:
        ValueError: ``times`` is not an int >= 1.
    """
    if type(times) is bool or not isinstance(times, int) or times < 1:
        raise ValueError(f"times must be an int >= 1, got {times!r}")
    _system(brama)._inject_event_manager_crash(times)
