"""One command for every benchmark: ``python -m tests.benchmarks [--quick]``.

Install with ``pip install -e '.[bench]'`` (pybreaker, circuitbreaker, purgatory and
matplotlib). The full run writes ``docs/benchmarks.md`` and PNG charts under ``docs/``;
``--quick`` (for CI, about a minute) writes to a temporary directory unless ``--output``
is given, since figures from a quick run are not quoted. Each benchmark interleaves our
code with its peers in one process and reports medians and spread; this runner runs them
in turn (the fleet's on a redis-server of their own, ``tests/redis_server.py``; the
outage drill also rewrites its section of ``docs/fleet.md`` on a full run), adds the
scale curve (1k / 10k / 100k connections), draws the charts, and prints
every target with its verdict.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BENCHMARKS = ["bench_scale", "bench_guard", "bench_failure_path", "bench_events",
              "bench_processes", "bench_observability", "bench_fleet_figures",
              "bench_fleet_soak", "bench_fleet_drill"]  # the drill copies the two before
#: Benchmarks that also write a section of another page on a full run into docs/.
DOC_PAGES = {"bench_fleet_drill": ["--fleet-doc", str(ROOT / "docs" / "fleet.md")]}
CHARTS_TITLE = "## Charts"


def run_script(name: str, markdown: Path, quick: bool, extra: list[str] | None = None) -> float:
    """Run one benchmark script; returns its wall time."""
    command = [sys.executable, str(HERE / f"{name}.py"), "--markdown", str(markdown)]
    if quick:
        command.append("--quick")
    command += extra or []
    print(f"\n=== {' '.join(command[1:])}", flush=True)
    start = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.monotonic() - start


def _number(text: str) -> float:
    match = re.search(r"-?[\d,]+(?:\.\d+)?", text)
    if match is None:
        raise ValueError(f"no number in {text!r}")
    return float(match.group(0).replace(",", ""))


def table_rows(markdown: str, section: str) -> list[list[str]]:
    """The table rows (cells) of one ``## ...`` section."""
    match = re.search(rf"^{re.escape(section)}\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    if match is None:
        return []
    rows = []
    for line in match.group(1).splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def scale_curve(sizes: list[int], workdir: Path) -> list[tuple[int, float, float]]:
    """(connections, register seconds, RSS MiB) for each size, one round each."""
    points = []
    for size in sizes:
        out = workdir / f"scale_{size}.md"
        run_script("bench_scale", out, quick=False,
                   extra=["--connections", str(size), "--rounds", "1"])
        rows = table_rows(out.read_text(), "## Scale (issue: Foundation)")
        seconds = next(_number(r[1]) for r in rows if r[0].startswith("register ")
                       and "(wall)" in r[0])
        rss = next(_number(r[1]) for r in rows if r[0].startswith("RSS growth"))
        points.append((size, seconds, rss))
    return points


def draw_charts(markdown: str, curve: list[tuple[int, float, float]], outdir: Path) -> list[str]:
    """Write the PNG charts; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    rows = table_rows(markdown, "## Guarded calls (issue: Guarding calls)")
    bars = [(r[0].replace("`", "").split(":")[0] + ":"
             + r[0].replace("`", "").split(":", 1)[1][:36], _number(r[1]))
            for r in rows if ":" in r[0] and r[1] not in ("—", "")
            and "->" not in r[0] and not r[0].startswith(("floor", "bare", "**"))
            and r[0].split(":")[0] in ("ours", "pybreaker", "circuitbreaker", "purgatory")]
    if bars:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels, values = zip(*bars, strict=True)
        colors = ["tab:green" if label.startswith("ours") else "tab:gray" for label in labels]
        ax.barh(labels, values, color=colors)
        ax.invert_yaxis()
        ax.set_xlabel("overhead per guarded call, ns (lower is better)")
        ax.set_title("Guarded-call overhead, success path, closed circuit")
        fig.tight_layout()
        fig.savefig(outdir / "bench_guard_overhead.png", dpi=110)
        plt.close(fig)
        names.append("bench_guard_overhead.png")
    rows = table_rows(markdown, "## Events (issue: Event system)")
    points = []
    for row in rows:
        match = re.match(r"5\. deliveries/s to ([\d,]+) inbox subs, 2 reporting threads$", row[0])
        if match:
            points.append((int(match.group(1).replace(",", "")), _number(row[1])))
    if points:
        points.sort()
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("inbox subscriptions (each gets every event)")
        ax.set_ylabel("deliveries per second")
        ax.set_title("Event deliveries against subscription count")
        fig.tight_layout()
        fig.savefig(outdir / "bench_events_fanout.png", dpi=110)
        plt.close(fig)
        names.append("bench_events_fanout.png")
    if curve:
        sizes = [p[0] for p in curve]
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
        for ax, values, label in ((left, [p[1] for p in curve], "register time, s"),
                                  (right, [p[2] for p in curve], "RSS growth, MiB")):
            ax.plot(sizes, values, marker="o", label="measured")
            per = values[-1] / sizes[-1]
            ax.plot(sizes, [per * s for s in sizes], linestyle="--", label="linear reference")
            ax.set_xlabel("connections")
            ax.set_ylabel(label)
            ax.legend()
        fig.suptitle("Scale: start time and memory against connection count")
        fig.tight_layout()
        fig.savefig(outdir / "bench_scale_curve.png", dpi=110)
        plt.close(fig)
        names.append("bench_scale_curve.png")
    return names


def replace_section(path: Path, title: str, body: str) -> None:
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    section = f"{title}\n\n{body}\n"
    text = pattern.sub(lambda _: section, text, count=1) if pattern.search(text) \
        else text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def verdicts(markdown: str) -> list[tuple[str, str, str, str]]:
    """Every table row that has a target and a verdict."""
    found = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 4 and cells[-1].lower() in ("met", "not met"):
            found.append((cells[0], cells[1], cells[-2], cells[-1]))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run for CI")
    parser.add_argument("--output", type=Path, default=None,
                        help="the markdown file (default: docs/benchmarks.md; a temporary "
                             "file with --quick)")
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, default=None)
    parser.add_argument("--no-charts", action="store_true")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="brama-bench-"))
    output = args.output or (workdir / "benchmarks.md" if args.quick
                             else ROOT / "docs" / "benchmarks.md")
    output.parent.mkdir(parents=True, exist_ok=True)
    if not output.exists():
        output.write_text("# Benchmarks\n\n", encoding="utf-8")
    for name in args.only or BENCHMARKS:
        writes_docs = not args.quick and output == ROOT / "docs" / "benchmarks.md"
        run_script(name, output, args.quick, DOC_PAGES.get(name) if writes_docs else None)
    if not args.no_charts and args.only is None:
        sizes = [1_000, 5_000] if args.quick else [1_000, 10_000, 100_000]
        curve = scale_curve(sizes, workdir)
        chart_dir = output.parent
        charts = draw_charts(output.read_text(encoding="utf-8"), curve, chart_dir)
        lines = ["Drawn by `python -m tests.benchmarks` from the figures above; the scale "
                 "curve from one round at each size: "
                 + ", ".join(f"{s:,} connections: {t:.2f} s, {m:.1f} MiB" for s, t, m in curve)
                 + ".", ""]
        lines += [f"![{c}]({c})" for c in charts]
        replace_section(output, CHARTS_TITLE, "\n".join(lines))
    rows = verdicts(output.read_text(encoding="utf-8"))
    print(f"\n=== targets ({output})")
    width = max((len(r[0]) for r in rows), default=10)
    for figure, value, target, verdict in rows:
        print(f"{figure:<{width}}  {value:<28}  {target:<16}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
