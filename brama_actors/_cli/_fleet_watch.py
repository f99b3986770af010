"""``python -m brama_actors watch --fleet URL --namespace NS``: every circuit of a fleet, live.

The view is read-only (``_fleet_view``, imported only here: it needs ``redis``, which
plain ``watch`` and ``demo`` must not): it shows the circuits every machine of the
fleet shares, including those registered after it started, and the fleet's own events,
without joining the fleet. Times are the Redis server's, as the fleet's are.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit, urlunsplit

from brama_actors import _rules as rules
from brama_actors._cli._screen import show
from brama_actors._errors import InvalidConfiguration
from brama_actors._events import Event, EventType
from brama_actors._status import CircuitState, ConnectionStatus

if TYPE_CHECKING:
    from brama_actors._cli._fleet_view import FleetHealth, FleetView

__all__ = ["ENV_FLEET_URL", "fleet_url", "redact", "render_fleet", "watch_fleet"]

#: Where ``--fleet`` without a URL reads it (a password in the URL then stays out of
#: the process list).
ENV_FLEET_URL = "BRAMA_FLEET_URL"
#: Never set: a bounded pause between reads of a Redis that does not answer.
_PAUSE = threading.Event()


def fleet_url(given: str) -> str:
    """The URL of ``--fleet URL``, or ``$BRAMA_FLEET_URL`` for ``--fleet`` alone.

    Raises:
        ValueError: ``--fleet`` alone and the variable is not set.
    """
    if given:
        return given
    url = os.environ.get(ENV_FLEET_URL, "")
    if not url:
        raise ValueError(f"--fleet needs a URL, or set {ENV_FLEET_URL}")
    return url


def refuse(command: str, exc: ValueError) -> int:
    """Exit code 2 and one line on stderr for a bad ``--fleet`` URL or ``--namespace``
    (``InvalidConfiguration``, a ``ValueError``) or ``--fleet`` alone with no URL."""
    what = "bad --fleet URL or --namespace: " if isinstance(exc, InvalidConfiguration) else ""
    print(f"{command}: {what}{exc}", file=sys.stderr)
    return 2


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000))


def _span(ms: int) -> str:
    seconds = abs(ms) / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _due(status: ConnectionStatus, now: int) -> str:
    """When the circuit's next expiry is due: ``0.8s``, or ``late 2.1s`` when overdue
    (no system holds the ticker lease, or it cannot reach Redis)."""
    due = rules.deadline(status)
    if due is None:
        return "-"
    return _span(due - now) if due >= now else f"late {_span(now - due)}"


def _openings(status: ConnectionStatus) -> int:
    return sum(count for _, to, count in status.transitions if to == CircuitState.OPEN)


def _health_line(health: FleetHealth) -> str:
    if health.connected:
        ticker = f"ticker lease held by {health.ticker}" if health.ticker else \
            "no ticker lease held (expiries wait for the next step on each circuit)"
        return f"fleet: reachable since {_clock(health.since)}; {ticker}"
    return (f"fleet: UNREACHABLE since {_clock(health.since)} ({health.error}); "
            "showing the last state read")


def render_fleet(url: str, namespace: str, statuses: Sequence[ConnectionStatus],
                 health: FleetHealth, lines_of_events: Sequence[str]) -> str:
    """One screen: the fleet's link, a table of its circuits, the latest events.

    Args:
        url: the Redis URL (printed without its password).
        namespace: the fleet namespace.
        statuses: every circuit, as the view read them.
        health: the link's state and the server's clock.
        lines_of_events: the latest events, already formatted.

    Returns:
        The screen's lines, joined.
    """
    now = health.server_now
    lines = [f"brama_actors fleet {redact(url)} namespace {namespace!r}  —  "
             f"{len(statuses)} circuit(s)", _health_line(health), ""]
    header = f"{'connection':<24} {'scope':<10} {'state':<10} {'fails':>5} " \
             f"{'in state':>9} {'expiry':>10} {'opened':>6} {'successes':>9} {'failures':>8}"
    lines += [header, "-" * len(header)]
    for status in sorted(statuses, key=lambda s: (s.scope or "", s.identifier)):
        lines.append(
            f"{status.identifier[:24]:<24} {(status.scope or '-')[:10]:<10} "
            f"{status.state.value:<10} {status.failure_count:>5} "
            f"{_span(now - status.state_changed_at):>9} {_due(status, now):>10} "
            f"{_openings(status):>6} {status.total_successes:>9} {status.total_failures:>8}")
    lines += ["", "latest transitions and failures:"]
    lines += list(lines_of_events) or ["  (none yet)"]
    return "\n".join(lines)


def watch_fleet(args: argparse.Namespace, out: TextIO, stop: threading.Event | None,
                event_line: Callable[[Event], str],
                watched: tuple[EventType, ...]) -> int:
    """Run ``watch --fleet``; returns the exit code.

    Args:
        args: the parsed command line (``fleet``, ``namespace``, ``once``, ``interval``,
            ``events``, ``duration``).
        out: where screens go.
        stop: ends the loop after the current screen once set.
        event_line: formats one event for the list of latest events.
        watched: the event types listed.
    """
    from brama_actors._cli._fleet_view import FleetView

    try:
        url = fleet_url(args.fleet)
        view = FleetView(url, args.namespace)
    except ValueError as exc:
        return refuse("watch", exc)
    try:
        try:
            view.load()
        except view.errors as exc:  # the first read: a wrong address or credentials
            print(f"watch: cannot read the fleet at {redact(url)}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        return _loop(args, view, url, out, stop, event_line, watched)
    except KeyboardInterrupt:
        return 0
    finally:
        view.close()


def _loop(args: argparse.Namespace, view: FleetView, url: str, out: TextIO,
          stop: threading.Event | None, event_line: Callable[[Event], str],
          watched: tuple[EventType, ...]) -> int:
    from brama_actors._cli._fleet_view import VIEW_BLOCK_MS

    recent: collections.deque[Event] = collections.deque(maxlen=max(1, args.events))
    tty = out.isatty()
    ends = None if args.duration is None else time.monotonic() + args.duration
    while True:
        deadline = time.monotonic() + (0 if args.once else args.interval)
        if ends is not None:
            deadline = min(deadline, ends)
        while True:
            remaining = int((deadline - time.monotonic()) * 1000)
            recent.extend(view.poll(remaining, watched))
            if remaining <= 0:
                break
            if not view.health().connected:  # a dead link fails fast: do not spin on it
                _PAUSE.wait(min(remaining, VIEW_BLOCK_MS) / 1000)
        screen = render_fleet(url, args.namespace, view.statuses(), view.health(),
                              [event_line(e) for e in recent])
        if show(out, screen, args, tty=tty, stop=stop, ends=ends):
            return 0
