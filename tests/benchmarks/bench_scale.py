"""Scale benchmark (issue: Foundation): many connections in one system, and the hot path.

Run from the repository root::

    python tests/benchmarks/bench_scale.py                      # full: 10k connections, 3 rounds
    python tests/benchmarks/bench_scale.py --quick              # a smoke run, a few seconds
    python tests/benchmarks/bench_scale.py --markdown docs/benchmarks.md

What it measures:

* scale rounds, each in a fresh subprocess (so RSS and thread counts start clean):
  register N connections in one ``Brama`` system (wall time, per-call p50/p99, RSS growth
  read from ``/proc/self/status``, ``threading.active_count()``), then ``brama.stop()``
  (wall time, threads left). Medians over the rounds are reported.
* hot path, in one more subprocess holding N connections: ``brama.available("svc-123")``
  and the module-level ``brama_actors.available("svc-123")`` against a bare function
  ``f("svc-123")``, timed timeit-style and interleaved (each repeat runs all three, in a
  rotating order), and per-call ``failure()`` / ``success()`` latency on a closed circuit.

It is not a test: pytest collects ``test_*.py`` only, so this file is never collected.
No dependency beyond the standard library and brama_actors.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SECTION_TITLE = "## Scale (issue: Foundation)"

# Targets of the Foundation issue.
TARGET_REGISTER_S = 2.0
TARGET_RSS_MIB = 64.0
TARGET_THREADS = 16
TARGET_AVAILABLE_RATIO = 5.0

PROBE = "svc-123"


# -- small helpers -----------------------------------------------------------------------
def rss_kib() -> int:
    """Resident set size of this process in KiB (VmRSS of /proc/self/status)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("VmRSS not found in /proc/self/status")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (0 < pct <= 100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_revision() -> str:
    """The commit measured, and whether brama_actors/ had uncommitted changes (read-only git)."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "brama_actors"],
                               cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {head}" + (" + uncommitted changes in brama_actors/" if dirty.strip() else "")


def machine_info() -> dict[str, str]:
    from importlib.metadata import version

    import brama_actors

    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pykka": version("pykka"),
        "brama_actors": brama_actors.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "source": source_revision(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# -- child: one scale round --------------------------------------------------------------
def child_scale(connections: int) -> dict[str, Any]:
    """Register ``connections`` connections in a fresh system, then stop it."""
    import brama_actors

    gc.collect()
    threads_before = threading.active_count()
    rss_before = rss_kib()

    brama = brama_actors.Brama.start()
    register = brama.register
    per_call: list[int] = []
    clock = time.perf_counter_ns
    start = clock()
    for i in range(connections):
        t0 = clock()
        register(f"svc-{i}")
        per_call.append(clock() - t0)
    register_s = (clock() - start) / 1e9

    threads_after = threading.active_count()
    gc.collect()
    rss_after = rss_kib()
    assert len(brama.connections()) == connections

    t0 = clock()
    brama.stop()
    stop_s = (clock() - t0) / 1e9
    threads_after_stop = threading.active_count()
    tenth = max(1, connections // 10)
    return {
        "connections": connections,
        "register_s": register_s,
        "register_p50_us": percentile(per_call, 50) / 1e3,
        "register_p99_us": percentile(per_call, 99) / 1e3,
        "register_first10pct_us": statistics.fmean(per_call[:tenth]) / 1e3,
        "register_last10pct_us": statistics.fmean(per_call[-tenth:]) / 1e3,
        "rss_growth_mib": (rss_after - rss_before) / 1024,
        "rss_before_mib": rss_before / 1024,
        "threads_before": threads_before,
        "threads_after_register": threads_after,
        "stop_s": stop_s,
        "threads_after_stop": threads_after_stop,
    }


# -- child: hot path ---------------------------------------------------------------------
def _interleaved(timers: dict[str, timeit.Timer], number: int,
                 repeat: int) -> dict[str, list[float]]:
    """Per-call seconds for each timer, ``repeat`` times, in a rotating order."""
    names = list(timers)
    results: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(timers[name].timeit(number) / number)
    return results


def _latencies(call: Callable[[], Any], calls: int, warmup: int) -> list[int]:
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    samples = []
    for _ in range(calls):
        t0 = clock()
        call()
        samples.append(clock() - t0)
    return samples


def _pykka_ask_reference(calls: int) -> list[int]:
    """Per-call ns of a plain Pykka ``ThreadingActor`` ask round trip (machine reference)."""
    import pykka

    class Echo(pykka.ThreadingActor):
        use_daemon_thread = True

        def on_receive(self, message: Any) -> Any:
            return message

    ref = Echo.start()
    try:
        return _latencies(lambda: ref.ask(None), calls, warmup=min(200, calls))
    finally:
        ref.stop()


def child_hot(connections: int, repeat: int, calls: int) -> dict[str, Any]:
    import brama_actors

    ask_ns = _pykka_ask_reference(calls)
    brama = brama_actors.Brama.start()
    for i in range(connections):
        brama.register(f"svc-{i}")
    if PROBE not in {s.identifier for s in brama.connections()}:
        brama.register(PROBE)
    brama_actors.register(PROBE)  # the default system, for the module-level function

    def f(x: Any) -> bool:
        return True

    namespace = {"f": f, "brama": brama, "brama_actors": brama_actors}
    probe = repr(PROBE)
    timers = {
        "bare": timeit.Timer(f"f({probe})", globals=namespace),
        "available": timeit.Timer(f"brama.available({probe})", globals=namespace),
        "module": timeit.Timer(f"brama_actors.available({probe})", globals=namespace),
        "loop": timeit.Timer("pass", globals=namespace),  # timeit's own loop overhead
    }
    assert brama.available(PROBE) is True and brama_actors.available(PROBE) is True
    # Calibrate on the slowest statement so that each timing lasts >= ~0.2 s.
    number, _ = timers["module"].autorange()
    number = max(number, 100_000)
    per_call = _interleaved(timers, number, repeat)

    # failure()/success() on a closed circuit that never opens.
    brama.register("bench-latency", max_attempts=10**9)
    fail_ns = _latencies(lambda: brama.failure("bench-latency"), calls, warmup=min(200, calls))
    succ_ns = _latencies(lambda: brama.success("bench-latency"), calls, warmup=min(200, calls))
    t0 = time.perf_counter_ns()
    brama.drain(timeout=30)
    drain_s = (time.perf_counter_ns() - t0) / 1e9
    final = brama.status("bench-latency")
    assert final.state == "closed", final
    brama.stop()
    brama_actors.stop()

    loop = per_call.pop("loop")
    bare = per_call["bare"]
    out: dict[str, Any] = {"number": number, "repeat": repeat, "calls": calls,
                           "loop_ns_min": min(loop) * 1e9}
    for name, values in per_call.items():
        out[f"{name}_ns_min"] = min(values) * 1e9
        out[f"{name}_ns_median"] = median(values) * 1e9
        if name != "bare":
            # Paired ratios: repeat i of the call over repeat i of the bare call.
            out[f"{name}_ratio_median"] = median([v / b for v, b in zip(values, bare, strict=True)])
            out[f"{name}_ratio_min"] = min(values) / min(bare)
            # Net of the timeit loop (closer to the call itself; stricter).
            out[f"{name}_ratio_net"] = ((min(values) - min(loop)) / (min(bare) - min(loop)))
    for name, samples in (("failure", fail_ns), ("success", succ_ns)):
        out[f"{name}_p50_us"] = percentile(samples, 50) / 1e3
        out[f"{name}_p99_us"] = percentile(samples, 99) / 1e3
        out[f"{name}_mean_us"] = statistics.fmean(samples) / 1e3
    out["success_drain_s"] = drain_s
    out["pykka_ask_p50_us"] = percentile(ask_ns, 50) / 1e3
    out["pykka_ask_p99_us"] = percentile(ask_ns, 99) / 1e3
    out["latency_final_failure_count"] = final.failure_count
    return out


# -- parent: run children, report --------------------------------------------------------
def run_child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *args],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"benchmark child {args} failed with exit code {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return dict(json.loads(lines[-1]))


def met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def build_rows(rounds: list[dict[str, Any]],
               hot: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, verdict) rows; the verdict is '' when there is no target."""
    def med(key: str) -> float:
        return median([r[key] for r in rounds])

    def spread(key: str, fmt: str) -> str:
        values = sorted(r[key] for r in rounds)
        if len(values) == 1:
            return ""
        return f" ({format(values[0], fmt)}-{format(values[-1], fmt)})"

    n = rounds[0]["connections"]
    scale = n / 10_000
    target_reg = TARGET_REGISTER_S * scale
    target_rss = TARGET_RSS_MIB * scale
    reg = med("register_s")
    rss = med("rss_growth_mib")
    threads = med("threads_after_register")
    threads_stop = max(r["threads_after_stop"] for r in rounds)
    threads_base = max(r["threads_before"] for r in rounds)
    scaled = "" if n == 10_000 else f" (10k target scaled to {n:,})"
    ratio_a = hot["available_ratio_median"]
    ratio_m = hot["module_ratio_median"]
    return [
        (f"register {n:,} connections (wall)", f"{reg:.2f} s{spread('register_s', '.2f')}",
         f"< {target_reg:g} s{scaled}", met(reg < target_reg)),
        ("register, per call p50 / p99",
         f"{med('register_p50_us'):.0f} / {med('register_p99_us'):.0f} µs", "", ""),
        ("register, mean of first / last 10% of calls",
         f"{med('register_first10pct_us'):.0f} / {med('register_last10pct_us'):.0f} µs", "", ""),
        (f"RSS growth for {n:,} connections",
         f"{rss:.1f} MiB{spread('rss_growth_mib', '.1f')} ({rss * 1024 / n:.1f} KiB each)",
         f"< {target_rss:g} MiB{scaled}", met(rss < target_rss)),
        ("threads after registration (threading.active_count)", f"{threads:.0f}",
         f"<= {TARGET_THREADS}", met(threads <= TARGET_THREADS)),
        ("brama.stop() (wall)", f"{med('stop_s'):.2f} s{spread('stop_s', '.2f')}", "", ""),
        ("threads after stop", f"{threads_stop}", f"= before start ({threads_base})",
         met(threads_stop <= threads_base)),
        ("bare call f('svc-123'), min / median",
         f"{hot['bare_ns_min']:.1f} / {hot['bare_ns_median']:.1f} ns", "", ""),
        ("brama.available('svc-123'), min / median",
         f"{hot['available_ns_min']:.1f} / {hot['available_ns_median']:.1f} ns", "", ""),
        ("available() / bare call (median of paired ratios; min/min)",
         f"{ratio_a:.2f}x ({hot['available_ratio_min']:.2f}x)",
         f"<= {TARGET_AVAILABLE_RATIO:g}x", met(ratio_a <= TARGET_AVAILABLE_RATIO)),
        ("brama_actors.available('svc-123') (default system), min / median",
         f"{hot['module_ns_min']:.1f} / {hot['module_ns_median']:.1f} ns", "", ""),
        ("module available() / bare call (median of paired ratios; min/min)",
         f"{ratio_m:.2f}x ({hot['module_ratio_min']:.2f}x)",
         f"<= {TARGET_AVAILABLE_RATIO:g}x", met(ratio_m <= TARGET_AVAILABLE_RATIO)),
        ("ratios net of timeit loop overhead (available; module)",
         f"{hot['available_ratio_net']:.2f}x; {hot['module_ratio_net']:.2f}x "
         f"(loop {hot['loop_ns_min']:.1f} ns)", "", ""),
        ("failure() per call p50 / p99 (closed circuit)",
         f"{hot['failure_p50_us']:.1f} / {hot['failure_p99_us']:.1f} µs", "", ""),
        ("success() per call p50 / p99 (closed circuit)",
         f"{hot['success_p50_us']:.1f} / {hot['success_p99_us']:.1f} µs", "", ""),
        (f"drain() after {hot['calls']:,} success() calls",
         f"{hot['success_drain_s'] * 1e3:.1f} ms", "", ""),
        ("reference: plain pykka ThreadingActor ask round trip p50 / p99",
         f"{hot['pykka_ask_p50_us']:.1f} / {hot['pykka_ask_p99_us']:.1f} µs", "", ""),
    ]


def text_table(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("figure", "value", "target", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    return "\n".join(lines)


def markdown_section(rows: list[tuple[str, str, str, str]], info: dict[str, str],
                     command: str, details: str) -> str:
    out = [
        SECTION_TITLE,
        "",
        "Command (from the repository root):",
        "",
        "```sh",
        command,
        "```",
        "",
        details,
        "",
        "| figure | value | target | verdict |",
        "|---|---|---|---|",
    ]
    out += [f"| {f} | {v} | {t or '—'} | {m or '—'} |" for f, v, t, m in rows]
    out += [
        "",
        "Machine:",
        "",
        f"* CPU: {info['cpu']}, {info['cores']} cores",
        f"* {info['python']}, pykka {info['pykka']}, brama_actors {info['brama_actors']}",
        f"* OS: {info['os']}",
        f"* source measured: {info['source']}",
        f"* date: {info['date']}",
        "",
    ]
    return "\n".join(out)


def write_markdown(path: Path, section: str) -> None:
    """Replace this benchmark's section in ``path`` (or add it), keeping other sections."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION_TITLE)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=None,
                        help="connections per system (default 10000; 1000 with --quick)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="scale rounds, each in a fresh subprocess (default 5; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--markdown", type=Path, default=None, metavar="PATH",
                        help="write/replace the 'Scale' section of this markdown file")
    parser.add_argument("--child", choices=["scale", "hot"], help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    connections = args.connections or (1_000 if args.quick else 10_000)
    rounds_n = args.rounds or (1 if args.quick else 5)
    repeat = args.repeat or (3 if args.quick else 9)
    calls = args.calls or (500 if args.quick else 5_000)
    if connections < 1 or rounds_n < 1:
        parser.error("--connections and --rounds must be >= 1")

    if args.child == "scale":
        print(json.dumps(child_scale(connections)))
        return 0
    if args.child == "hot":
        print(json.dumps(child_hot(connections, repeat, calls)))
        return 0

    print(f"bench_scale: {connections:,} connections, {rounds_n} round(s), "
          f"hot path {repeat} repeats, {calls:,} latency samples", flush=True)
    rounds = []
    for i in range(rounds_n):
        result = run_child(["--child", "scale", "--connections", str(connections)])
        rounds.append(result)
        print(f"  round {i + 1}: register {result['register_s']:.2f} s, "
              f"RSS +{result['rss_growth_mib']:.1f} MiB, "
              f"threads {result['threads_after_register']}, stop {result['stop_s']:.2f} s, "
              f"threads after stop {result['threads_after_stop']}", flush=True)
    hot = run_child(["--child", "hot", "--connections", str(connections),
                     "--repeat", str(repeat), "--calls", str(calls)])
    rows = build_rows(rounds, hot)
    info = machine_info()
    print()
    print(text_table(rows))
    print()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['python']}, "
          f"pykka {info['pykka']}, {info['date']}; source: {info['source']}")

    if args.markdown is not None:
        command = "python tests/benchmarks/bench_scale.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]))
        details = (
            f"{rounds_n} scale round(s), each a fresh subprocess: start a system, register "
            f"{connections:,} connections `svc-0`…, stop it; medians (range in brackets). "
            "RSS is VmRSS from `/proc/self/status` before `Brama.start()` and after the "
            "last registration. Hot path: a separate subprocess holding the same number of "
            f"connections; timeit loops of {hot['number']:,} calls, {repeat} interleaved "
            "repeats of the bare call `f('svc-123')` (`def f(x): return True`), "
            "`brama.available('svc-123')` and `brama_actors.available('svc-123')`; the ratio "
            "is the median of per-repeat ratios (min/min in brackets). "
            f"`failure()`/`success()` latency: {calls:,} timed calls each on a closed circuit "
            "with `max_attempts=10**9`."
        )
        write_markdown(args.markdown, markdown_section(rows, info, command.strip(), details))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
