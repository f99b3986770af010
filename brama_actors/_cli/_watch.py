"""``python -m brama_actors watch ADDRESS``: a live view of every circuit on a node.

``watch --fleet URL --namespace NS`` shows a fleet's circuits instead (``_fleet_watch``).

The authkey comes from the environment (``BRAMA_AUTHKEY``, hex) or a file only its
owner can read (``--authkey-file``), never from the command line, where other users
could see it in the process list.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import queue
import stat
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from brama_actors._cli._fleet_watch import ENV_FLEET_URL, watch_fleet
from brama_actors._cli._screen import show
from brama_actors._errors import BramaError
from brama_actors._events import Event, EventType
from brama_actors._remote._client import Client, connect
from brama_actors._status import ConnectionStatus

__all__ = ["add_parser", "event_line", "main", "read_authkey", "render"]

ENV_AUTHKEY = "BRAMA_AUTHKEY"

#: The events listed under "latest events": transitions, failures and the coming and
#: going of connections. ``success`` is left out (a healthy service would push every
#: state change off the screen with it); successes are counted per connection in the
#: table instead, from each status. The ``circuit_*`` events, ``expiry``,
#: ``registration``, ``connection_unregistered`` and ``cleanup`` repeat what these say.
WATCHED_EVENTS = (
    EventType.STATE_CHANGE,
    EventType.FAILURE,
    EventType.CIRCUIT_RESET,
    EventType.CONNECTION_REGISTERED,
    EventType.CONNECTION_REMOVED,
)


def parse_address(text: str) -> str | tuple[str, int]:
    """``/path/to/socket`` or ``host:port``."""
    if os.sep in text or text.endswith(".sock"):
        return text
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit():
        return (host.strip("[]") or "127.0.0.1", int(port))
    return text


def read_authkey(path: str | None) -> bytes:
    """The authkey from ``--authkey-file`` (mode 0600 or stricter) or ``BRAMA_AUTHKEY``.

    Raises:
        ValueError: no key, a malformed key, or a key file others can read.
    """
    if path is not None:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            raise ValueError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
        with open(path, "rb") as handle:
            data = handle.read().strip()
    else:
        text = os.environ.get(ENV_AUTHKEY)
        if not text:
            raise ValueError(f"set {ENV_AUTHKEY} (hex) or pass --authkey-file")
        data = text.strip().encode()
    try:
        return bytes.fromhex(data.decode())
    except ValueError:
        raise ValueError("the authkey must be hex-encoded") from None


def _age(ms: int) -> str:
    seconds = max(0, ms) / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def render(statuses: Sequence[ConnectionStatus], events: Sequence[Event], now_ms: int,
           address: object) -> str:
    """One screen: a table of circuits and the latest events."""
    lines = [f"brama_actors node {address}  —  {len(statuses)} circuit(s)", ""]
    header = f"{'connection':<28} {'scope':<12} {'state':<10} {'fails':>5} " \
             f"{'in state':>9} {'successes':>10} {'success':>8}"
    lines += [header, "-" * len(header)]
    for status in sorted(statuses, key=lambda s: (s.scope or "", s.identifier)):
        rate = "-" if status.success_rate is None else f"{status.success_rate:.0%}"
        lines.append(
            f"{status.identifier[:28]:<28} {(status.scope or '-')[:12]:<12} "
            f"{status.state.value:<10} {status.failure_count:>5} "
            f"{_age(now_ms - status.state_changed_at):>9} {status.total_successes:>10} "
            f"{rate:>8}")
    lines += ["", "latest transitions and failures:"]
    if not events:
        lines.append("  (none yet)")
    lines += [event_line(event) for event in events]
    return "\n".join(lines)


def event_line(event: Event) -> str:
    """One line of the latest events: time, connection, type and what changed."""
    clock = time.strftime("%H:%M:%S", time.localtime(event.timestamp / 1000))
    detail = ""
    if "new_state" in event.data:
        detail = f" {event.data['previous_state']} -> {event.data['new_state']}"
    elif event.data.get("reason") is not None:
        detail = f" ({event.data['reason']})"
    where = event.connection if event.scope is None else f"{event.scope}/{event.connection}"
    return f"  {clock} {where}: {event.event.value}{detail}"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``watch`` sub-command to the CLI."""
    parser = subparsers.add_parser(
        "watch", help="live view of the circuits of a node or of a fleet",
        description="Show every circuit on a node (with its success count) and its latest "
                    "transitions and failures. The authkey is "
                    f"read from ${ENV_AUTHKEY} (hex) or --authkey-file (mode 0600). With "
                    "--fleet, show every circuit of a fleet's namespace instead, read-only "
                    f"(--fleet alone reads the URL from ${ENV_FLEET_URL}).")
    parser.add_argument("address", nargs="?",
                        help="the node's socket path, or host:port (not with --fleet)")
    parser.add_argument("--fleet", nargs="?", const="", metavar="URL",
                        help="watch a fleet: its Redis URL (redis://, rediss://, unix://)")
    parser.add_argument("--namespace", default="brama",
                        help="the fleet's fleet_namespace (default 'brama')")
    parser.add_argument("--authkey-file", help="file holding the hex authkey (mode 0600)")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between refreshes (default 1)")
    parser.add_argument("--events", type=int, default=10,
                        help="how many latest transitions and failures to show (default 10)")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop after SECONDS (default: until Ctrl-C)")
    parser.set_defaults(func=main)


def _check(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line, if anything (exit code 2)."""
    if (args.address is None) == (args.fleet is None):
        return "give a node's ADDRESS or --fleet URL (one of them)"
    if args.fleet is not None and args.authkey_file is not None:
        return "--authkey-file is for a node; a fleet's credentials are in its URL"
    duration = args.duration
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        return f"--duration must be a finite number > 0, got {duration}"
    return None


def main(args: argparse.Namespace, out: TextIO | None = None,
         stop: threading.Event | None = None) -> int:
    """Run ``watch``; returns the exit code.

    Args:
        args: the parsed command line.
        out: where screens go (default: stdout).
        stop: ends the loop after the current screen once set (default: Ctrl-C only).
    """
    out = sys.stdout if out is None else out
    problem = _check(args)
    if problem is not None:
        print(f"watch: {problem}", file=sys.stderr)
        return 2
    if args.fleet is not None:
        return watch_fleet(args, out, stop, event_line, WATCHED_EVENTS)
    try:
        authkey = read_authkey(args.authkey_file)
    except (OSError, ValueError) as exc:
        print(f"watch: {exc}", file=sys.stderr)
        return 2
    address = parse_address(args.address)
    try:
        client: Client = connect(address, authkey=authkey)
    except BramaError as exc:
        print(f"watch: {exc}", file=sys.stderr)
        return 1
    recent: collections.deque[Event] = collections.deque(maxlen=max(1, args.events))
    tty = out.isatty()
    ends = None if args.duration is None else time.monotonic() + args.duration
    try:
        inbox = client.subscribe(events=WATCHED_EVENTS)
        while True:
            deadline = time.monotonic() + (0 if args.once else args.interval)
            if ends is not None:
                deadline = min(deadline, ends)
            while True:
                remaining = deadline - time.monotonic()
                try:
                    item = inbox.get(timeout=max(0.0, remaining)) if remaining > 0 \
                        else inbox.get(timeout=0)
                except queue.Empty:
                    break
                recent.extend(item if isinstance(item, tuple) else (item,))
            screen = render(client.connections(), list(recent), int(time.time() * 1000),
                            address)
            if show(out, screen, args, tty=tty, stop=stop, ends=ends):
                return 0
    except KeyboardInterrupt:
        return 0
    except BramaError as exc:
        print(f"watch: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
