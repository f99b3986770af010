"""``watch --fleet`` and ``demo --fleet`` against a real redis-server."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest
import redis

from brama_actors import Brama, CircuitState, Event, EventType
from brama_actors.__main__ import main as cli
from brama_actors._cli._fleet_demo import FleetFacts, _remove_namespace
from brama_actors._cli._fleet_view import FleetHealth, FleetView
from brama_actors._cli._fleet_watch import redact, render_fleet
from brama_actors._cli._watch import main as watch
from tests.fleet_helpers import documented_acl, namespace
from tests.redis_cluster import LocalCluster
from tests.redis_server import RedisServer
from tests.screens import Screens
from tests.test_demo import _demo

#: Seconds any wait of these tests may take at most.
WAIT = 30.0
#: Commands that change data or run scripts: the watcher's user must have none.
WRITES = {"eval", "evalsha", "script|load", "xadd", "del", "hset", "hincrby", "zadd",
          "zrem", "sadd", "srem", "set", "pexpire", "zremrangebyscore", "@all", "@write"}


def _args(**kwargs: Any) -> argparse.Namespace:
    defaults: dict[str, Any] = {"address": None, "fleet": None, "namespace": "brama",
                                "authkey_file": None, "once": True, "interval": 1.0,
                                "events": 10, "duration": None}
    defaults.update(kwargs)
    return argparse.Namespace(**defaults)


class _Screens(Screens):
    """Screens of ``watch --fleet``."""

    def last(self) -> str:
        """The last complete screen."""
        return self.getvalue().rsplit("brama_actors fleet ", 1)[-1]

    def wait(self, predicate: Callable[[str], bool]) -> None:
        with self.flushed:
            assert self.flushed.wait_for(lambda: predicate(self.last()), WAIT), self.last()


def _row(screen: str, name: str) -> str:
    return next(line for line in screen.splitlines() if line.startswith(name + " "))


def _read_only_user(server: RedisServer, ns: str) -> tuple[str, str]:
    """A Redis user allowed only the watcher's read commands on ``ns``: (url, name)."""
    name = f"watch-{ns}"
    rules = documented_acl("watcher")
    assert rules[:3] == ["on", ">secret", "~{orders}:*"] and "-@all" in rules
    assert not any(rule.startswith("+") and rule[1:] in WRITES for rule in rules)
    rules[1:3] = [">pw", "~{" + ns + "}:*"]
    server.client().execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", name, *rules)
    scheme, rest = server.url.split("://", 1)
    return f"{scheme}://{name}:pw@{rest}", name


def _denied(server: RedisServer, user: str) -> list[Any]:
    """The ACL LOG entries of ``user``: commands or keys Redis refused it."""
    entries: Any = server.client(decode_responses=True).acl_log()
    return [e for e in entries if e["username"] == user]


# -- watch --fleet ---------------------------------------------------------------------------
def test_watch_fleet_shows_other_systems_circuits_live_and_read_only(
        redis_server: RedisServer) -> None:
    """Circuits another system registers before and after the watch started appear, with
    their transitions; the watcher runs as a user that may only read (nothing denied)."""
    ns = namespace()
    url, user = _read_only_user(redis_server, ns)
    assert _denied(redis_server, user) == []
    brama = Brama.start(fleet=redis_server.url, fleet_namespace=ns)
    try:
        brama.register("db", max_attempts=2)
        brama.failure("db", reason="timeout")
        out = _Screens()
        stop = threading.Event()
        result: list[int] = []
        watcher = threading.Thread(target=lambda: result.append(watch(
            _args(fleet=url, namespace=ns, once=False, interval=0.05), out, stop)))
        watcher.start()
        try:
            out.wait(lambda s: "1 circuit(s)" in s)
            first = out.last()
            assert "fleet: reachable since" in first and "ticker lease held by" in first
            assert " closed " in _row(first, "db") and "    1 " in _row(first, "db")
            brama.register("late", scope="eu", max_attempts=1)  # after the watch started
            brama.failure("late", scope="eu", reason="refused")
            out.wait(lambda s: "eu/late: state_change closed -> open" in s)
            screen = out.last()
            assert "2 circuit(s)" in screen
            late = _row(screen, "late")
            assert " eu " in late and " open " in late and "      1 " in late  # opened once
            assert "eu/late: failure (refused)" in screen
            assert brama.unregister("db")
            out.wait(lambda s: "1 circuit(s)" in s and "eu/late" in s)
            assert not any(line.startswith("db ") for line in out.last().splitlines())
        finally:
            stop.set()
            watcher.join(WAIT)
        assert result == [0]
        assert _denied(redis_server, user) == []  # only reads: nothing written or counted
        as_watcher = redis.Redis.from_url(url)
        with pytest.raises(redis.exceptions.NoPermissionError):
            as_watcher.set("{" + ns + "}:ticker", "me")  # the user cannot write at all
        as_watcher.close()
        # (This test's own default client also sent CLIENT SETINFO on connect, denied.)
        assert [e["object"] for e in _denied(redis_server, user)
                if e["object"] != "client"] == ["set"]
        status = brama.status("late", scope="eu")
        assert status.failure_count == 1 and status.total_failures == 1
    finally:
        brama.stop()


def test_fleet_view_loads_a_snapshot_when_entries_were_trimmed_unread(
        redis_server: RedisServer) -> None:
    """Entries trimmed before the view read them leave a gap in ``ver``: the view loads
    a snapshot, so a circuit known only from those entries still shows, as it is."""
    ns = namespace()
    view = FleetView(redis_server.url, ns)
    brama = Brama.start(fleet=redis_server.url, fleet_namespace=ns)
    try:
        view.load()
        assert view.statuses() == []
        brama.register("db", max_attempts=1)
        brama.failure("db")
        redis_server.client().xtrim("{" + ns + "}:events", maxlen=0)  # never read
        brama.register("api")
        deadline = time.monotonic() + WAIT
        while {s.identifier for s in view.statuses()} != {"db", "api"}:
            assert time.monotonic() < deadline, view.statuses()
            view.poll(100)
        db = next(s for s in view.statuses() if s.identifier == "db")
        assert db.state is CircuitState.OPEN and db.failure_count == 1
    finally:
        view.close()
        brama.stop()


def test_watch_fleet_says_when_redis_stops_answering_and_when_it_is_back() -> None:
    """A paused Redis shows as UNREACHABLE with the last state kept; reachable again after."""
    with RedisServer.local() as server:
        ns = namespace()
        brama = Brama.start(fleet=server.url, fleet_namespace=ns)
        out = _Screens()
        stop = threading.Event()
        result: list[int] = []
        watcher = threading.Thread(target=lambda: result.append(watch(
            _args(fleet=server.url, namespace=ns, once=False, interval=0.05), out, stop)))
        try:
            brama.register("db")
            watcher.start()
            out.wait(lambda s: "fleet: reachable" in s and "1 circuit(s)" in s)
            server.pause()
            try:
                out.wait(lambda s: "fleet: UNREACHABLE since" in s)
                assert "showing the last state read" in out.last()
                assert " closed " in _row(out.last(), "db")  # the last state stays
            finally:
                server.resume()
            out.wait(lambda s: "fleet: reachable" in s)
        finally:
            stop.set()
            if watcher.is_alive():
                watcher.join(WAIT)
            brama.stop()
        assert result == [0]


def test_watch_fleet_command_line_with_duration_and_url_from_environment(
        redis_server: RedisServer) -> None:
    """``--fleet`` alone reads $BRAMA_FLEET_URL; ``--duration`` ends the live view (exit 0)."""
    ns = namespace()
    brama = Brama.start(fleet=redis_server.url, fleet_namespace=ns)
    try:
        brama.register("payments")
        env = dict(os.environ, BRAMA_FLEET_URL=redis_server.url)
        result = subprocess.run(
            [sys.executable, "-m", "brama_actors", "watch", "--fleet", "--namespace", ns,
             "--duration", "0.5", "--interval", "0.1"],
            capture_output=True, text=True, timeout=WAIT, env=env, check=False)
    finally:
        brama.stop()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.count("1 circuit(s)") >= 2  # live: several screens, then the end
    assert "payments" in result.stdout


def test_watch_fleet_once_on_a_cluster_node_that_does_not_serve_the_namespace(
        redis_cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    """``watch --fleet URL --once`` given a Redis Cluster node that does not serve the
    namespace, as the documented read-only user, shows the namespace's circuits (read
    from the primary that serves it); no node denied the user anything."""
    ns = namespace()
    owner = redis_cluster.owner_of(ns)
    other = redis_cluster.others(owner)[0]
    name = f"watch-{ns}"
    rules = documented_acl("watcher")
    rules[1:3] = [">pw", "~{" + ns + "}:*"]
    for node in redis_cluster.nodes:  # ACLs are per node
        node.admin().execute_command("ACL", "SETUSER", name, *rules)
    brama = Brama.start(fleet=owner.url, fleet_namespace=ns)
    try:
        brama.register("db", max_attempts=1)
        brama.failure("db", reason="timeout")
        brama.register("cache")
    finally:
        brama.stop()
    url = f"redis://{name}:pw@{other.address}/0"
    assert cli(["watch", "--fleet", url, "--namespace", ns, "--once"]) == 0
    out = capsys.readouterr().out
    assert "2 circuit(s)" in out and "fleet: reachable since" in out
    assert " open " in _row(out, "db") and " closed " in _row(out, "cache")
    assert [e for node in redis_cluster.nodes for e in node.admin().acl_log()
            if e["username"] == name] == []


@pytest.mark.parametrize(("argv", "message"), [
    (["--fleet", "http://localhost:6379", "--once"], "bad --fleet URL or --namespace"),
    (["--fleet", "redis://localhost:6379", "--namespace", "{x}", "--once"],
     "fleet_namespace must be"),
    (["--fleet", "redis://localhost:6379", "/tmp/node.sock"], "ADDRESS or --fleet URL"),
    (["--once"], "ADDRESS or --fleet URL"),
    (["--fleet", "--once"], "--fleet needs a URL, or set BRAMA_FLEET_URL"),
    (["--fleet", "redis://localhost:6379", "--duration", "0"], "--duration must be"),
])
def test_watch_fleet_bad_command_line_exits_2(argv: list[str], message: str,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A bad URL, namespace or combination is a one-line message and exit code 2."""
    monkeypatch.delenv("BRAMA_FLEET_URL", raising=False)
    assert cli(["watch", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("watch: ") and message in err


def test_watch_fleet_bad_url_from_the_shell_has_no_traceback() -> None:
    """The real command with a bad URL prints one line and exits 2."""
    result = subprocess.run(
        [sys.executable, "-m", "brama_actors", "watch", "--fleet", "nonsense", "--once"],
        capture_output=True, text=True, timeout=WAIT, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("watch: bad --fleet URL") and "Traceback" not in \
        result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_watch_fleet_unreachable_redis_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A Redis that does not answer at start: a message naming it (no password), exit 1."""
    assert cli(["watch", "--fleet", "redis://:secret@127.0.0.1:1/0", "--once"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("watch: cannot read the fleet at redis://:***@127.0.0.1:1/0")
    assert "secret" not in err


def test_render_fleet_shows_the_link_and_late_expiries(system: Brama) -> None:
    """Unreachable is said with the last error; an expiry past due shows how late it is."""
    system.register("db", max_attempts=1, expiry=1_000)
    system.failure("db")
    status = system.status("db")
    assert status.opened_at is not None
    late = FleetHealth(False, 0, "ConnectionError: refused", None,
                       status.opened_at + 3_500)
    screen = render_fleet("redis://u:pw@h:1/0", "orders", [status], late, [])
    assert "redis://u:***@h:1/0 namespace 'orders'" in screen
    assert "fleet: UNREACHABLE since" in screen and "(ConnectionError: refused)" in screen
    assert "late 2.5s" in _row(screen, "db")
    due = FleetHealth(True, 0, None, None, status.opened_at + 400)
    screen = render_fleet("unix:///r.sock", "orders", [status], due, [])
    assert "no ticker lease held" in screen and "  0.6s " in _row(screen, "db")


def test_redact_hides_only_the_password() -> None:
    """URLs are printed without their password, and unchanged without one."""
    assert redact("rediss://user:pw@redis.internal:6380/2") == \
        "rediss://user:***@redis.internal:6380/2"
    assert redact("unix:///tmp/r.sock") == "unix:///tmp/r.sock"


# -- demo --fleet ----------------------------------------------------------------------------
def _pids(text: str) -> list[int]:
    line = next(line for line in text.splitlines() if line.startswith("workers ready:"))
    return [int(pid) for pid in re.findall(r"pid (\d+)", line)]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.timeout(120)
def test_demo_fleet_runs_end_to_end(redis_server: RedisServer) -> None:
    """Three worker processes of one fleet: each transition decided once and received once
    by every process, one trial per half-open period; every worker and key is gone after."""
    result = subprocess.run(
        [sys.executable, "-m", "brama_actors", "demo", "--fleet", redis_server.url,
         "--duration", "3", "--seed", "1"],
        capture_output=True, text=True, timeout=100, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "3 worker processes, each a Brama.start(fleet=...) system" in out
    assert "inventory: closed -> open  (Threshold exceeded" in out
    facts = out.split("fleet facts:", 1)[1]
    assert "and received exactly once by each of the 3 processes (same event ids)" in facts
    trials = re.search(r"trial calls per period, fleet-wide: ([\d, ]+)", facts)
    assert trials is not None
    per_period = [int(n) for n in trials.group(1).split(",")]
    assert set(per_period) <= {0, 1} and 1 in per_period
    assert "MISMATCH" not in out
    assert re.search(r"inventory: trial call 1 of this half-open period fleet-wide, by p\d", out)
    assert "trial call 2" not in out
    pids = _pids(out)
    assert len(pids) == 3 and all(_gone(pid) for pid in pids)
    ns = re.search(r"--namespace (\S+)", out)
    assert ns is not None
    assert redis_server.client().keys("{" + ns.group(1) + "}:*") == []


@pytest.mark.timeout(120)
def test_demo_fleet_runs_on_a_cluster_node_that_does_not_serve_the_namespace(
        redis_cluster: LocalCluster) -> None:
    """``demo --fleet`` given a Redis Cluster node that does not serve the namespace:
    its workers and its view share the fleet on the primary that does, the facts hold;
    removing a demo's namespace finds its keys there too."""
    ns = namespace()
    owner = redis_cluster.owner_of(ns)
    other = redis_cluster.others(owner)[0]
    result = subprocess.run(
        [sys.executable, "-m", "brama_actors", "demo", "--fleet", other.url, "--namespace",
         ns, "--duration", "2", "--processes", "2", "--seed", "1"],
        capture_output=True, text=True, timeout=100, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "received exactly once by each of the 2 processes" in result.stdout
    assert "MISMATCH" not in result.stdout
    pattern = "{" + ns + "}:*"
    assert list(owner.admin().scan_iter(match=pattern))  # kept: --namespace was given
    _remove_namespace(other.url, ns)
    assert list(owner.admin().scan_iter(match=pattern)) == []


@pytest.mark.timeout(120)
def test_demo_fleet_ctrl_c_stops_every_worker(redis_server: RedisServer) -> None:
    """SIGINT during the run: the workers are stopped and waited for, exit 0, no trace."""
    with _demo("--fleet", redis_server.url, "--duration", "60", "--processes", "2") as demo:
        ready = demo.wait_for("workers ready:")
        demo.wait_for("--- t=")
        demo.process.send_signal(signal.SIGINT)
        code, out, err = demo.finish()
    assert code == 0, err
    assert err == ""
    assert "interrupted: stopped the worker processes" in out
    assert "received exactly once by each of the 2 processes" in out
    pids = _pids(ready)
    assert len(pids) == 2 and all(_gone(pid) for pid in pids)


def test_demo_fleet_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad URL, a bad process count or --serve with --fleet: a message and exit 2."""
    assert cli(["demo", "--fleet", "http://x", "--duration", "1"]) == 2
    assert "demo: bad --fleet URL or --namespace" in capsys.readouterr().err
    assert cli(["demo", "--fleet", "redis://x", "--processes", "0"]) == 2
    assert "--processes must be between 1 and 16" in capsys.readouterr().err
    assert cli(["demo", "--fleet", "redis://x", "--serve"]) == 2
    assert "--serve is for the plain demo" in capsys.readouterr().err


def test_demo_fleet_unreachable_redis_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A Redis that does not answer: one message, exit 1, no worker started."""
    assert cli(["demo", "--fleet", "redis://127.0.0.1:1/0", "--duration", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("demo: cannot read the fleet at redis://127.0.0.1:1/0")
    assert "workers ready" not in captured.out


def _change(event_id: str, name: str, new: CircuitState, at: int) -> Event:
    data = {"previous_state": CircuitState.CLOSED, "new_state": new}
    return Event(EventType.STATE_CHANGE, at, name, None, MappingProxyType(data), event_id)


def test_fleet_facts_catch_a_missing_or_repeated_delivery_and_a_second_trial() -> None:
    """The demo's checks fail when a process misses or repeats a transition, or when a
    half-open period lets two trials through."""
    facts = FleetFacts(2)
    facts.fleet_event(_change("1-0:2", "db", CircuitState.OPEN, 1))
    facts.fleet_event(_change("2-0:2", "db", CircuitState.HALF_OPEN, 2))
    for index in (0, 1):
        facts.worker(index, {"event": "1-0:2"})
        facts.worker(index, {"event": "2-0:2"})
    facts.worker(0, {"trial": "db", "period": 2})
    lines, holds = facts.verdict(2)
    assert holds and "received exactly once by each of the 2 processes" in lines[0]
    assert "fleet-wide: 1 " in lines[1]
    facts.worker(1, {"event": "2-0:2"})  # delivered twice to p2
    lines, holds = facts.verdict(2)
    assert not holds and lines[0] == "  MISMATCH: p2: 0 missing, 1 twice"
    facts = FleetFacts(1)
    facts.fleet_event(_change("2-0:2", "db", CircuitState.HALF_OPEN, 2))
    facts.worker(0, {"event": "2-0:2"})
    facts.worker(0, {"trial": "db", "period": 2})
    facts.worker(0, {"trial": "db", "period": 2})
    lines, holds = facts.verdict(1)
    assert not holds and "fleet-wide: 2 " in lines[1]
