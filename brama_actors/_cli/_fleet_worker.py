"""One worker process of ``demo --fleet``: a fleet system calling the simulated services.

Run by the demo as ``python -m brama_actors._cli._fleet_worker``, never by hand. It talks
to the demo over its standard streams, one JSON object per line:

* in (stdin): the settings, then ``go`` (the run's start on the wall clock, shared by
  every process of the machine, so that the simulated outage is the same for all), then
  ``stop``, then ``sync`` (the id of the fleet's last transition);
* out (stdout): ``ready``; each ``state_change`` its subscriber received (its id); each
  half-open trial call the guard let through, with the half_open period it belongs to
  (the Redis time the circuit half-opened, the same on every machine); its counts every
  quarter second; ``stopped``; ``synced``.

The fleet URL comes in ``$BRAMA_FLEET_URL``, never on the command line. The process
ignores SIGINT (the demo stops it, also on Ctrl-C) and ends by itself when its stdin
closes, so a demo that dies never leaves it running.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import sys
import threading
from typing import Any

from brama_actors._cli._demo import Service, _services
from brama_actors._errors import BramaError, CircuitOpenError
from brama_actors._events import EventType
from brama_actors._status import CircuitState
from brama_actors._system._brama import Brama

__all__ = ["main"]

#: Seconds the worker waits for its subscriber to receive the fleet's last transition.
SYNC_TIMEOUT = 10.0

#: How long a simulated call takes (s).
CALL_SECONDS = 0.01

_out_lock = threading.Lock()


def send(**message: Any) -> None:
    """One message to the demo (a JSON line on stdout)."""
    line = json.dumps(message, separators=(",", ":"))
    with _out_lock, contextlib.suppress(OSError, ValueError):  # the demo went away:
        sys.stdout.write(line + "\n")  # its closed stdin ends this process soon
        sys.stdout.flush()


class _Worker:
    """The calls, the counts and the events of this process."""

    def __init__(self, brama: Brama, services: list[Service], seed: int) -> None:
        self.brama = brama
        self.services = services
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.refused_trial = {s.name: 0 for s in services}  # refused: a trial was running
        self.seen: list[str] = []  # ids of the state_change events received
        self.seen_cond = threading.Condition()
        self.closing = threading.Event()  # the subscriber may end once it is empty

    def counts(self) -> dict[str, list[int]]:
        """Per service: calls, errors, refused, refused while a trial ran."""
        return {s.name: [*s.counts(), self.refused_trial[s.name]] for s in self.services}

    def call(self, service: Service, progress: float) -> None:
        """One guarded call; a trial call is reported with its half_open period."""
        try:
            with self.brama.guard(service.name):
                with service.lock:
                    service.calls += 1
                # The replica shows half_open inside the guard only when the fleet gave
                # this call a trial permit: the acquire's reply updates the replica, also
                # when it says the circuit is no longer half_open.
                status = self.brama.status(service.name)
                if status.state is CircuitState.HALF_OPEN:
                    send(trial=service.name, period=status.state_changed_at)
                # A call takes a while, as a real one does: long enough that the other
                # processes ask for a trial while one runs, and are refused.
                self.stop.wait(CALL_SECONDS)
                service.call(progress, self.rng)
        except CircuitOpenError as exc:
            with service.lock:
                service.rejected += 1
                if "trial" in str(exc):
                    self.refused_trial[service.name] += 1
        except (ConnectionError, TimeoutError):
            with service.lock:
                service.failures += 1

    def run(self, start_ms: int, duration: float) -> None:
        """Call every service in turn until ``stop`` (a thread)."""
        length_ms = duration * 1000
        try:
            while not self.stop.is_set():
                progress = (self.brama.clock.now() - start_ms) / length_ms
                for service in self.services:
                    self.call(service, progress)
                self.stop.wait(0.02)  # pacing: ~50 calls per second per service
        except BramaError as exc:
            send(error=f"the fleet system failed: {exc}")
            self.stop.set()

    def forward(self, inbox: Any) -> None:
        """Send the id of every ``state_change`` received (a thread)."""
        while True:
            try:
                event = inbox.get(timeout=0.1)
            except queue.Empty:
                if self.closing.is_set():
                    return
                continue
            with self.seen_cond:
                self.seen.append(event.id)
                self.seen_cond.notify_all()
            send(event=event.id, conn=event.connection)

    def wait_for_event(self, event_id: str | None, timeout: float) -> bool:
        """Wait until the subscriber received ``event_id`` (None: nothing to wait for).

        The fleet delivers in the stream's order, so every earlier transition has been
        received too once this one has.
        """
        with self.seen_cond:
            return self.seen_cond.wait_for(
                lambda: event_id is None or event_id in self.seen, timeout)

    def report(self) -> None:
        """Send the counts every quarter second until ``stop`` (a thread)."""
        while not self.stop.wait(0.25):
            send(counts=self.counts())


def main() -> int:
    """Run one worker; returns the exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = json.loads(sys.stdin.readline() or "{}")
    if not settings:
        return 0  # the demo went away before it started us
    url = os.environ["BRAMA_FLEET_URL"]
    brama = Brama.start(fleet=url, fleet_namespace=settings["namespace"],
                        max_attempts=settings["max_attempts"], expiry=settings["expiry"])
    threads: list[threading.Thread] = []
    worker: _Worker | None = None
    try:
        services = _services()
        for service in services:
            brama.register(service.name, type="http")  # adopts it if another did first
        worker = _Worker(brama, services, settings["seed"])
        inbox = brama.subscribe(events=[EventType.STATE_CHANGE])
        send(ready=os.getpid())
        go = json.loads(sys.stdin.readline() or "{}")
        if not go:
            return 0
        threads = [threading.Thread(target=worker.run, args=(go["start"], go["duration"])),
                   threading.Thread(target=worker.forward, args=(inbox,)),
                   threading.Thread(target=worker.report)]
        for thread in threads:
            thread.start()
        for line in sys.stdin:
            message = json.loads(line)
            if "stop" in message:
                worker.stop.set()
                threads[0].join(SYNC_TIMEOUT)
                send(stopped=worker.counts())
            elif "sync" in message:
                worker.wait_for_event(message["sync"], SYNC_TIMEOUT)
                send(synced=len(worker.seen))
                break
        return 0
    except BramaError as exc:  # e.g. NodeUnavailable: Redis stopped answering at start
        send(error=f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        if worker is not None:
            worker.stop.set()
            worker.closing.set()
        for thread in threads:
            thread.join(SYNC_TIMEOUT)
        with contextlib.suppress(BramaError, TimeoutError):
            brama.stop()


if __name__ == "__main__":
    raise SystemExit(main())
