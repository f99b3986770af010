"""``python -m brama_actors demo --fleet URL``: the demo's services called by a fleet.

Several worker processes (``_fleet_worker``), each a ``Brama.start(fleet=URL, ...)``
system, call the same simulated services as the plain demo. This process is not a member
of the fleet: it reads the fleet's circuits and events read-only (``_fleet_view``, as
``watch --fleet`` does), prints each transition once, as the fleet decided it, and checks
what the workers report against it:

* every transition is one step in Redis (one stream entry), decided once for the whole
  fleet however many processes reported the failures that caused it;
* each process's subscriber received each transition exactly once, with the same id;
* each half-open period let exactly one trial call through, fleet-wide (the others were
  refused while it ran).

The run is bounded (``--duration``); Ctrl-C stops it early. Either way the workers are
stopped, waited for, and killed if they do not end in time: none is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, TextIO

import brama_actors
from brama_actors._authority._fleet._tail import stream_id
from brama_actors._cli._demo import (
    MAX_ATTEMPTS,
    Display,
    Service,
    _Interrupts,
    _services,
    _use_color,
    expiry_for,
)
from brama_actors._cli._fleet_view import FleetView
from brama_actors._cli._fleet_watch import redact
from brama_actors._events import Event, EventType
from brama_actors._runtime._clock import SystemClock
from brama_actors._status import CircuitState, ConnectionStatus

__all__ = ["FleetFacts", "run_fleet"]

#: Seconds the demo waits for its workers to start, to stop, and to catch up.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class FleetFacts:
    """What the fleet decided (read from its stream) against what each process saw.

    Args:
        processes: how many worker processes there are.
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.transitions: list[Event] = []  # state_change events, in the stream's order
        self.delivered = [Counter[str]() for _ in range(processes)]
        self.trials: Counter[tuple[str, int]] = Counter()  # (service, period) -> trials
        self.counts: list[Mapping[str, Sequence[int]]] = [{} for _ in range(processes)]

    def fleet_event(self, event: Event) -> None:
        """Note one event read from the fleet's stream."""
        if event.event is EventType.STATE_CHANGE:
            self.transitions.append(event)

    def worker(self, index: int, message: Mapping[str, Any]) -> None:
        """Note one message of worker ``index``."""
        if "event" in message:
            self.delivered[index][str(message["event"])] += 1
        elif "trial" in message:
            self.trials[(str(message["trial"]), int(message["period"]))] += 1
        for name in ("counts", "stopped"):
            if name in message:
                self.counts[index] = message[name]

    def apply_counts(self, services: Sequence[Service]) -> None:
        """Sum every process's counts into ``services`` (what ``Display`` prints)."""
        for service in services:
            totals = [sum(c.get(service.name, (0, 0, 0, 0))[i] for c in self.counts)
                      for i in range(3)]
            with service.lock:
                service.calls, service.failures, service.rejected = totals

    def per_process(self, services: Sequence[Service]) -> str:
        """Calls per process and service, one line."""
        parts = []
        for service in services:
            calls = [str(c.get(service.name, (0,))[0]) for c in self.counts]
            parts.append(f"{service.name} {'/'.join(calls)}")
        return f"calls by p1/.../p{self.processes}: " + ", ".join(parts)

    def periods(self, upto: int | None = None) -> list[tuple[str, int, int]]:
        """Each half-open period ``(service, began at, trial calls fleet-wide)``."""
        chosen = self.transitions if upto is None else self.transitions[:upto]
        return [(str(e.connection), e.timestamp, self.trials[(str(e.connection), e.timestamp)])
                for e in chosen if e.data.get("new_state") == CircuitState.HALF_OPEN]

    def progress(self) -> str:
        """How far each process's subscriber is, one line."""
        got = ", ".join(f"p{i + 1} {sum(d.values())}" for i, d in enumerate(self.delivered))
        return (f"fleet: {len(self.transitions)} transition(s) decided in Redis so far; "
                f"received by {got}")

    def verdict(self, upto: int) -> tuple[list[str], bool]:
        """The closing facts about the first ``upto`` transitions, and whether they hold."""
        ids = [e.id for e in self.transitions[:upto]]
        wrong = []
        for i, delivered in enumerate(self.delivered):
            missing = [x for x in ids if delivered[x] == 0]
            twice = [x for x in ids if delivered[x] > 1]
            if missing or twice:
                wrong.append(f"p{i + 1}: {len(missing)} missing, {len(twice)} twice")
        lines = []
        if wrong:
            lines.append(f"  MISMATCH: {'; '.join(wrong)}")
        else:
            lines.append(f"  each of the {len(ids)} transition(s) was decided once in Redis "
                         f"and received exactly once by each of the {self.processes} "
                         "processes (same event ids)")
        periods = self.periods(upto)
        tried = [n for _, _, n in periods]
        if periods:
            lines.append(f"  {len(periods)} half-open period(s); trial calls per period, "
                         f"fleet-wide: {', '.join(map(str, tried))} (half_open_max_calls=1)")
        refused = sum(c.get(name, (0, 0, 0, 0))[3] for c in self.counts for name in c)
        lines.append(f"  {refused} call(s) refused because another process's trial was "
                     "running")
        holds = not wrong and all(n <= 1 for n in tried)
        return lines, holds


class _Worker:
    """One worker process and the threads that read its output."""

    def __init__(self, index: int, url: str, inbox: queue.Queue[tuple[Any, ...]]) -> None:
        self.index = index
        root = os.path.dirname(os.path.dirname(os.path.abspath(brama_actors.__file__)))
        env = dict(os.environ, BRAMA_FLEET_URL=url,
                   PYTHONPATH=os.pathsep.join(filter(None, [root,
                                                            os.environ.get("PYTHONPATH")])))
        # A session of its own: a Ctrl-C in the terminal reaches only the demo, which
        # then stops the workers in order.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "brama_actors._cli._fleet_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env, start_new_session=True)
        self.errors: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, inbox),
                             name=f"demo-fleet-p{index + 1}-out", daemon=True),
            threading.Thread(target=self._errors, args=(self.process.stderr,),
                             name=f"demo-fleet-p{index + 1}-err", daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], inbox: queue.Queue[tuple[Any, ...]]) -> None:
        for line in stream:
            with contextlib.suppress(ValueError):
                inbox.put(("worker", self.index, json.loads(line)))
        inbox.put(("exit", self.index, None))

    def _errors(self, stream: IO[str]) -> None:
        for line in stream:
            self.errors.append(line.rstrip())

    def send(self, **message: Any) -> None:
        """One message to the worker (lost if it already ended)."""
        stdin = self.process.stdin
        with contextlib.suppress(OSError, ValueError):
            assert stdin is not None
            stdin.write(json.dumps(message) + "\n")
            stdin.flush()

    def close(self) -> None:
        """Close its stdin: the worker ends by itself after that."""
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()

    def end(self, timeout: float) -> None:
        """Wait for the process to exit; kill it if it does not in ``timeout`` s."""
        self.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)

    def failure(self) -> str:
        """Why the worker ended early, from its stderr."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT)
        self._readers[1].join(STOP_TIMEOUT)  # all of stderr, up to the traceback's end
        last = self.errors[-1] if self.errors else f"exit code {self.process.poll()}"
        return f"p{self.index + 1} (pid {self.process.pid}) ended early: {last}"


def run_fleet(url: str, namespace: str | None, processes: int, duration: float, seed: int,
              out: TextIO) -> int:
    """Run the demo as ``processes`` worker processes of one fleet.

    Args:
        url: the fleet's Redis URL.
        namespace: the fleet namespace (None: a fresh one, removed at the end).
        processes: how many worker processes to start.
        duration: seconds the services are called for.
        seed: the seed of the simulated services (worker i uses ``seed + i``).
        out: where to print.

    Returns:
        0 when the run ends (or Ctrl-C stops it) and the fleet facts hold; 1 when the
        fleet cannot be read, a worker fails, or a fact does not hold.

    Raises:
        InvalidConfiguration: a URL or namespace the fleet refuses.
    """
    own = namespace is None
    ns = f"brama-demo-{uuid.uuid4().hex[:8]}" if namespace is None else namespace
    view = FleetView(url, ns)
    with _Interrupts().installed() as interrupts:
        try:
            return _FleetRun(view, url, ns, processes, duration, seed, out).run(interrupts)
        finally:
            view.close()
            if own:
                _remove_namespace(url, ns)


def _remove_namespace(url: str, namespace: str) -> None:
    """Delete the keys of the demo's own namespace (best effort; on a Redis Cluster,
    on the node serving it: a SCAN sees only the keys of the node it is sent to)."""
    import redis

    from brama_actors._authority._fleet._cluster import Nodes, close_client
    from brama_actors._authority._fleet._link import KeyNames

    nodes = Nodes(url, namespace, 2_000)
    client: Any = nodes.client(2.0)
    try:
        with contextlib.suppress(redis.RedisError, OSError):
            client = nodes.follow(client, 2.0)
            keys = list(client.scan_iter(match=KeyNames.of(namespace).tag + ":*", count=500))
            if keys:
                client.delete(*keys)
    finally:
        close_client(client)


class _FleetRun:
    """One run of ``demo --fleet``."""

    def __init__(self, view: FleetView, url: str, namespace: str, processes: int,
                 duration: float, seed: int, out: TextIO) -> None:
        self.view = view
        self.url = url
        self.namespace = namespace
        self.duration = duration
        self.seed = seed
        self.out = out
        self.services = _services()
        self.facts = FleetFacts(processes)
        self.inbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.workers: list[_Worker] = []
        self.count = processes
        self.display: Display | None = None
        self.failed: str | None = None
        self.stopping = False
        self.reading = threading.Event()
        #: Which workers sent a message with this key ("ready", "stopped", "synced").
        self.got: dict[str, set[int]] = {"ready": set(), "stopped": set(), "synced": set()}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- the fleet's stream, on a thread ----------------------------------------------------
    def _read_fleet(self) -> None:
        while self.reading.is_set():
            events = self.view.poll(200)
            if events:
                self.inbox.put(("fleet", events))

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind, *rest = item
        if kind == "fleet":
            for event in rest[0]:
                self.facts.fleet_event(event)
                if self.display is not None:
                    line = self.display.event(event)
                    if line is not None:
                        self.say(line)
        elif kind == "worker":
            index, message = rest
            self.facts.worker(index, message)
            for key, indices in self.got.items():
                if key in message:
                    indices.add(index)
            if "trial" in message and self.display is not None:
                self.say(self._trial_line(index, message))
            if "error" in message and self.failed is None:
                self.failed = f"p{index + 1}: {message['error']}"
        elif kind == "exit" and self.failed is None and not self.stopping:
            self.failed = self.workers[rest[0]].failure()

    def _trial_line(self, index: int, message: Mapping[str, Any]) -> str:
        """A trial call as it starts, numbered within its half-open period fleet-wide."""
        assert self.display is not None
        name, period = str(message["trial"]), int(message["period"])
        at = (self.view.server_now() - self.display.start_ms) / 1000
        return (f"  t={at:5.1f}s  {name}: trial call {self.facts.trials[(name, period)]} of "
                f"this half-open period fleet-wide, by p{index + 1}")

    def _pump(self, until: Callable[[], bool], timeout: float) -> bool:
        """Handle what arrives until ``until()`` holds (True) or ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        while not until():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.failed is not None and not self.stopping):
                return until()
            try:
                self._handle(self.inbox.get(timeout=min(remaining, 0.2)))
            except queue.Empty:
                continue
        return True

    def _received(self, key: str) -> Callable[[], bool]:
        """True once every worker sent a message with ``key``."""
        return lambda: len(self.got[key]) == self.count

    # -- the run ----------------------------------------------------------------------------
    def run(self, interrupts: _Interrupts) -> int:
        try:
            self.view.load()
        except self.view.errors as exc:
            print(f"demo: cannot read the fleet at {redact(self.url)}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        expiry = expiry_for(self.duration)
        began = time.monotonic()
        interrupted = False
        reader = threading.Thread(target=self._read_fleet, name="demo-fleet-reader",
                                  daemon=True)
        self.reading.set()
        reader.start()
        try:
            self._start(expiry)
            if self.failed is None:
                self._calls()
            interrupts.armed = False
        except KeyboardInterrupt:
            interrupted = True
        finally:
            interrupts.armed = False
            upto = self._stop(interrupted)
            self.reading.clear()
            reader.join(STOP_TIMEOUT)
        if interrupted:
            self.say("\ninterrupted: stopped the worker processes")
        return self._summary(upto, time.monotonic() - began, interrupted)

    def _start(self, expiry: int) -> None:
        self.say(f"brama_actors demo --fleet: {self.count} worker processes, each a "
                 f"Brama.start(fleet=...) system, {len(self.services)} services, "
                 f"max_attempts={MAX_ATTEMPTS}, expiry={expiry} ms, {self.duration:g} s, "
                 f"seed {self.seed} (Ctrl-C to stop)")
        self.say(f"fleet {redact(self.url)}, namespace {self.namespace!r}; watch it live "
                 f"with:\n  python -m brama_actors watch --fleet {redact(self.url)} "
                 f"--namespace {self.namespace}")
        ready = self._received("ready")
        for index in range(self.count):
            worker = _Worker(index, self.url, self.inbox)
            self.workers.append(worker)
            worker.send(namespace=self.namespace, max_attempts=MAX_ATTEMPTS, expiry=expiry,
                        seed=self.seed + index)
        if not self._pump(ready, START_TIMEOUT):
            self.failed = self.failed or "the worker processes did not start in time"
            return
        pids = ", ".join(f"p{w.index + 1} pid {w.process.pid}" for w in self.workers)
        self.say(f"workers ready: {pids}")
        start_ms = SystemClock().now()
        self.display = Display(self.services, self.view.server_now(), _use_color(self.out))
        for worker in self.workers:
            worker.send(start=start_ms, duration=self.duration)

    def _calls(self) -> None:
        assert self.display is not None
        began = time.monotonic()
        next_table = began
        while self.failed is None:
            now = time.monotonic()
            if now >= began + self.duration:
                return
            if now >= next_table:
                self._table()
                next_table += 1.0
            self._pump(lambda: False, min(next_table, began + self.duration) - now)

    def _table(self) -> None:
        assert self.display is not None
        statuses = {s.identifier: s for s in self.view.statuses() if s.scope is None}
        self.facts.apply_counts(self.services)
        self.say(self.display.table(statuses, self.view.server_now()))
        self.say(self.facts.per_process(self.services))
        self.say(self._health() + "; " + self.facts.progress())

    def _health(self) -> str:
        health = self.view.health()
        if not health.connected:
            return f"fleet UNREACHABLE ({health.error})"
        holder = f"ticker lease held by {health.ticker}" if health.ticker else "no ticker"
        return f"fleet reachable, {holder}"

    def _stop(self, interrupted: bool) -> int:
        """Stop the workers, let them catch up with the fleet, end them.

        Returns:
            How many of the fleet's transitions every worker was asked to have received.
        """
        self.stopping = True
        timeout = STOP_TIMEOUT / 2 if interrupted else STOP_TIMEOUT
        upto = 0
        with contextlib.suppress(KeyboardInterrupt):  # only while disarmed: defensive
            if self.workers and self.display is not None:
                stopped = self._received("stopped")
                for worker in self.workers:
                    worker.send(stop=True)
                self._pump(stopped, timeout)
                # Every call has ended: read the stream to its end, then ask each worker to
                # wait until its subscriber received the last transition read.
                with contextlib.suppress(*self.view.errors):
                    top = stream_id(self.view.top_id())
                    self._pump(lambda: stream_id(self.view.last_id()) >= top, timeout)
                upto = len(self.facts.transitions)
                last = self.facts.transitions[-1].id if upto else None
                synced = self._received("synced")
                for worker in self.workers:
                    worker.send(sync=last)
                self._pump(synced, timeout)
            for worker in self.workers:
                worker.close()
            for worker in self.workers:
                worker.end(timeout)
        return upto

    def _summary(self, upto: int, elapsed: float, interrupted: bool) -> int:
        if self.display is not None:
            final: dict[str, ConnectionStatus] = {
                s.identifier: s for s in self.view.statuses() if s.scope is None}
            self.facts.apply_counts(self.services)
            self.say(self.display.table(final, self.view.server_now()))
            self.say(self.facts.per_process(self.services))
            self.say(self.display.summary(elapsed, self.seed, interrupted))
            self.say("fleet facts:")
            lines, holds = self.facts.verdict(upto)
            for line in lines:
                self.say(line)
            if not holds and self.failed is None:
                self.failed = "a fleet fact did not hold (see above)"
        if self.failed is not None:
            self.say(f"error: {self.failed}")
            return 1
        return 0

