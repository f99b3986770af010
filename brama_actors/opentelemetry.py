"""OpenTelemetry metrics for brama_actors circuits (extra ``opentelemetry``; API.md 14).

::

    from brama_actors.opentelemetry import instrument, uninstrument

    instrument(brama)                 # the global MeterProvider, or meter_provider=...
    ...
    uninstrument()

Instruments on meter ``"brama_actors"``, each with attributes ``brama.connection`` and
``brama.scope`` (``""`` when unscoped):

* ``brama.circuit.state`` observable gauge, plus ``brama.state``: 1 for the current
  state, 0 for the others;
* ``brama.calls`` observable counter (unit ``{call}``), plus ``brama.outcome``
  (``success``, ``failure``, ``rejected``, ``ignored``);
* ``brama.circuit.transitions`` observable counter, plus ``brama.from_state`` and
  ``brama.to_state``;
* ``brama.call.duration`` histogram (unit ``s``), plus ``brama.outcome``
  (``success`` or ``failure``): recorded by guards for the calls that ran, never for
  refusals. Guards report durations process-wide, so it holds the guarded calls of
  every system in the process, not only ``brama``'s. A guarded call only appends its
  duration to a queue (a histogram ``record`` costs microseconds, more than the whole
  guarded call); the queue is recorded into the histogram when the SDK collects, so the
  durations of one interval appear in the next collection. At most
  ``PENDING_DURATIONS`` wait; beyond that the oldest are dropped (nobody collected).

The observable instruments read the system when the SDK collects (no callback on any
call). One instrumentation is active at a time: ``instrument()`` while instrumented
raises ``RuntimeError`` (a second call with other arguments would otherwise be
silently ignored or silently replace the first); ``uninstrument()`` first.
Importing this module imports ``opentelemetry``; ``import brama_actors`` does not.
"""

from __future__ import annotations

import collections
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics

from brama_actors import _durations
from brama_actors._system import _metrics

__all__ = ["instrument", "uninstrument"]

#: Seconds; the SDK's default buckets (0 to 10,000) are meant for milliseconds.
_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0, 30.0)

#: Durations that may wait for the next collection (bounded: nobody may ever collect).
PENDING_DURATIONS = 100_000


@dataclass(eq=False)
class _Active:
    """What the instruments of one meter report: set by instrument(), cleared after."""

    brama: Any = None
    on: bool = False
    # One read of the system per collection, shared by the callbacks (see _make).
    reading: Any = None
    left: int = 0
    at: float = 0.0


@dataclass(eq=False)
class _Instruments:
    """The instruments made on one meter, kept for the meter's life.

    Why: OpenTelemetry cannot remove an instrument, and asking a meter for an existing
    name returns the first instrument with its first callbacks. So each meter gets its
    instruments once; their callbacks read ``active``, which ``instrument()`` points
    at the system and ``uninstrument()`` switches off.
    """

    histogram: Any
    active: _Active = field(default_factory=_Active)
    # (identifier, scope, outcome, seconds) of guarded calls, recorded at collection.
    pending: collections.deque[tuple[str, str | None, str, float]] = field(
        default_factory=lambda: collections.deque(maxlen=PENDING_DURATIONS))


_lock = threading.Lock()
_made: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
_current: tuple[_Instruments, _durations.Observer] | None = None


def instrument(brama: Any = None, meter_provider: Any = None) -> None:
    """Report ``brama``'s circuits through OpenTelemetry until ``uninstrument()``.

    Args:
        brama: the system (a ``Brama`` or a ``Client``); ``None`` reads the default
            system at each collection, and reports nothing while none runs.
        meter_provider: where the meter ``"brama_actors"`` comes from (default: the
            global one, ``opentelemetry.metrics.get_meter_provider()``).

    Raises:
        TypeError: ``brama`` is neither a system nor ``None``.
        RuntimeError: already instrumented.
    """
    global _current
    system = _metrics.check_system(brama)
    meter = metrics.get_meter("brama_actors", meter_provider=meter_provider)
    with _lock:
        if _current is not None:
            raise RuntimeError("brama_actors.opentelemetry is already instrumented; "
                               "call uninstrument() first")
        made = _made.get(meter)
        if made is None:
            made = _made[meter] = _make(meter)
        made.active.brama = system
        made.active.on = True
        made.active.left = 0  # nothing read for another instrumentation is reused
        # A deque's append: atomic, and no Python frame per guarded call; the queue is
        # recorded into the histogram at collection.
        observe: _durations.Observer = made.pending.append
        _durations.OBSERVERS.append(observe)
        _current = (made, observe)


def uninstrument() -> None:
    """Stop reporting: the observable instruments report nothing from the next
    collection on, and guards stop timing calls for the histogram. Idempotent."""
    global _current
    with _lock:
        if _current is None:
            return
        made, observe = _current
        _current = None
        made.active.on = False
        made.active.brama = None
        made.pending.clear()
        try:
            _durations.OBSERVERS.remove(observe)
        except ValueError:
            pass


#: Observable instruments; one collection calls each one's callback once.
_CALLBACKS = 3


def _make(meter: Any) -> _Instruments:
    active = _Active()
    made: list[_Instruments] = []
    lock = threading.Lock()

    def read() -> _metrics.Reading:
        """One read of the system per collection, shared by the three callbacks (each
        would otherwise read every connection again); re-read after a second in case
        a collection skipped a callback."""
        if not active.on:
            return _metrics.Reading()
        with lock:
            now = time.monotonic()
            if active.left <= 0 or now - active.at > 1.0:
                flush(made[0])
                active.reading = _metrics.read(active.brama)
                active.left, active.at = _CALLBACKS, now
            active.left -= 1
            reading: _metrics.Reading = active.reading
            return reading

    def states(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        observations = []
        for status in read().connections:
            connection, scope = _metrics.labels(status)
            current = status.state
            for name in _metrics.STATES:
                observations.append(metrics.Observation(
                    1 if current == name else 0,
                    {"brama.connection": connection, "brama.scope": scope,
                     "brama.state": name}))
        return observations

    def calls(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        observations = []
        for status in read().connections:
            connection, scope = _metrics.labels(status)
            for outcome, name in _metrics.OUTCOMES:
                observations.append(metrics.Observation(
                    getattr(status, name),
                    {"brama.connection": connection, "brama.scope": scope,
                     "brama.outcome": outcome}))
        return observations

    def transitions(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        observations = []
        for status in read().connections:
            connection, scope = _metrics.labels(status)
            for from_state, to_state, count in status.transitions:
                observations.append(metrics.Observation(
                    count,
                    {"brama.connection": connection, "brama.scope": scope,
                     "brama.from_state": from_state, "brama.to_state": to_state}))
        return observations

    meter.create_observable_gauge(
        "brama.circuit.state", callbacks=[states],
        description="Circuit state: 1 for the current state, 0 for the others.")
    meter.create_observable_counter(
        "brama.calls", callbacks=[calls], unit="{call}",
        description="Outcomes recorded per connection (success, failure, rejected, "
                    "ignored).")
    meter.create_observable_counter(
        "brama.circuit.transitions", callbacks=[transitions],
        description="State changes per (from_state, to_state) since registration.")
    try:
        histogram = meter.create_histogram(
            "brama.call.duration", unit="s",
            description="Duration of guarded calls that ran (successes and failures).",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS)
    except TypeError:  # opentelemetry-api < 1.23 takes no advisory
        histogram = meter.create_histogram(
            "brama.call.duration", unit="s",
            description="Duration of guarded calls that ran (successes and failures).")
    made.append(_Instruments(histogram, active))
    return made[0]


def flush(made: _Instruments) -> None:
    """Record the durations guards queued into the histogram (at collection, before
    the SDK reads its instruments' aggregations, so they are in this collection)."""
    pending = made.pending
    record = made.histogram.record
    while True:
        try:
            identifier, scope, outcome, seconds = pending.popleft()
        except IndexError:
            return
        record(seconds, {"brama.connection": identifier, "brama.scope": scope or "",
                         "brama.outcome": outcome})
