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
import logging
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

logger = logging.getLogger("brama_actors")

#: Seconds; the SDK's default buckets (0 to 10,000) are meant for milliseconds.
_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5, 5.0, 10.0, 30.0)

#: Durations that may wait to be recorded (bounded: the recorder may fall behind).
_PENDING_MAX = 100_000
#: How often the recorder thread records the queued durations, seconds.
_RECORD_EVERY = 0.5
#: Observable instruments; one collection calls each one's callback once.
_CALLBACKS = 3


@dataclass(eq=False)
class _State:
    """The one instrumentation, read by every instrument's callback.

    Why module-wide rather than per meter: OpenTelemetry cannot remove an instrument,
    and a meter asked again for a name returns its first instrument with its first
    callbacks; the global provider's proxy meters also forward to whichever real meter
    is set later. So every callback, whichever the SDK kept, reads this state, and
    ``instrument()``/``uninstrument()`` only switch it.
    """

    # (system,) while instrumented (the system may be None: the default), else None.
    target: tuple[Any] | None = None
    histogram: Any = None
    # (identifier, scope, outcome, seconds) of guarded calls, not recorded yet.
    pending: collections.deque[_durations.Timing] = field(
        default_factory=lambda: collections.deque(maxlen=_PENDING_MAX))
    # One read of the system per collection, shared by the callbacks.
    reading: Any = None
    left: int = 0
    at: float = 0.0
    recorder: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    warned: bool = False


_lock = threading.Lock()  # guards _state's fields and the histogram's records
_state = _State()
_made: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # meter -> histogram


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
    system = _metrics.check_system(brama)
    meter = metrics.get_meter("brama_actors", meter_provider=meter_provider)
    with _lock:
        if _state.target is not None:
            raise RuntimeError("brama_actors.opentelemetry is already instrumented; "
                               "call uninstrument() first")
        histogram = _made.get(meter)
        if histogram is None:
            histogram = _made[meter] = _make(meter)
        _state.histogram = histogram
        _state.target = (system,)
        _state.left = 0  # nothing read for another instrumentation is reused
        _state.pending.clear()
        _state.stop = threading.Event()
        _state.recorder = threading.Thread(target=_record_loop, args=(_state.stop,),
                                           name="brama-otel-durations", daemon=True)
        _state.recorder.start()
        # A deque's append: atomic, and no Python frame per guarded call.
        _durations.OBSERVERS.append(_state.pending.append)


def uninstrument() -> None:
    """Stop reporting: the observable instruments report nothing from the next
    collection on, guards stop timing calls for the histogram, and the recorder thread
    ends. Idempotent."""
    with _lock:
        if _state.target is None:
            return
        _state.target = None
        _state.reading = None
        try:
            _durations.OBSERVERS.remove(_state.pending.append)
        except ValueError:
            pass
        _state.pending.clear()
        recorder, _state.recorder = _state.recorder, None
        _state.stop.set()
    if recorder is not None and recorder is not threading.current_thread():
        recorder.join(timeout=5)


def _record_loop(stop: threading.Event) -> None:
    """Record the queued durations every ``_RECORD_EVERY`` s until ``stop``."""
    while not stop.wait(_RECORD_EVERY):
        with _lock:
            if _state.target is not None:
                _record_pending()


def _record_pending() -> None:
    """Record the queued durations into the histogram (under ``_lock``)."""
    pending = _state.pending
    if len(pending) == _PENDING_MAX and not _state.warned:
        _state.warned = True
        logger.warning("brama_actors.opentelemetry: %d call durations were queued at "
                       "once; older ones may have been dropped", _PENDING_MAX)
    record = _state.histogram.record
    attributes: dict[tuple[str, str | None, str], dict[str, str]] = {}
    while True:
        try:
            identifier, scope, outcome, seconds = pending.popleft()
        except IndexError:
            return
        key = (identifier, scope, outcome)
        labels = attributes.get(key)
        if labels is None:
            labels = attributes[key] = {"brama.connection": identifier,
                                        "brama.scope": scope or "",
                                        "brama.outcome": outcome}
        record(seconds, labels)


def _read() -> _metrics.Reading:
    """One read of the system per collection, shared by the callbacks (each would
    otherwise read every connection again), after recording the queued durations so
    they are in this collection; re-read after a second in case a collection skipped
    a callback."""
    with _lock:
        target = _state.target
        if target is None:
            return _metrics.Reading()
        now = time.monotonic()
        if _state.left <= 0 or now - _state.at > 1.0:
            _record_pending()
            _state.reading = _metrics.read(target[0])
            _state.left, _state.at = _CALLBACKS, now
        _state.left -= 1
        reading: _metrics.Reading = _state.reading
        return reading


def _make(meter: Any) -> Any:
    """Create the instruments on ``meter`` (once per meter); returns the histogram."""

    def states(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        observations = []
        for status in _read().connections:
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
        for status in _read().connections:
            connection, scope = _metrics.labels(status)
            for outcome, name in _metrics.OUTCOMES:
                observations.append(metrics.Observation(
                    getattr(status, name),
                    {"brama.connection": connection, "brama.scope": scope,
                     "brama.outcome": outcome}))
        return observations

    def transitions(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        observations = []
        for status in _read().connections:
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
    description = "Duration of guarded calls that ran (successes and failures)."
    try:
        return meter.create_histogram(
            "brama.call.duration", unit="s", description=description,
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS)
    except TypeError:  # opentelemetry-api < 1.23 takes no advisory
        return meter.create_histogram("brama.call.duration", unit="s",
                                      description=description)
