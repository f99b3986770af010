"""Every documented example that shows its output prints exactly that output.

The convention, in README.md and docs/*.md:

* A runnable example is a fenced ```` ```python ```` block that runs on its own (imports
  included) and prints only deterministic things: use a ``ManualClock`` and ``drain()``,
  not sleeps, and print no ids, addresses or wall-clock times.
* Its expected output follows it directly: one paragraph that starts with ``Output``
  (``Output:``, or ``Output (a note on what it shows):``), then a fenced
  ```` ```text ```` block with the exact stdout.
* ``Output of `python examples/NAME.py`:`` followed by a ```` ```text ```` block is the
  output of that script instead; no python block is needed before it.

The test runs each example in a fresh interpreter (``-W error``, a temporary directory as
its working directory, this checkout first on ``PYTHONPATH``) and compares its stdout
with the block, line by line, ignoring trailing whitespace.

Other ```` ```text ```` blocks (signatures, diagrams) are not outputs, and a python block
without an ``Output`` paragraph is a fragment that is not run. A paragraph starting with
``Output`` whose text block has no runnable example right before it fails the test named
after that page and line, so output cannot be left behind when an example moves.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Seconds one example may take; below the suite's 60 s pytest-timeout so that a hung
#: example fails with its page and line rather than a bare timeout.
EXAMPLE_TIMEOUT = 30

_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
_SCRIPT = re.compile(r"^Output of `python (?P<path>examples/[\w./-]+\.py)`")


@dataclass(frozen=True)
class Block:
    """One fenced block of a Markdown page."""

    lang: str
    line: int  # 1-based line of the opening fence
    text: str
    before: str  # the page's text between the previous block (or the top) and this one


@dataclass(frozen=True)
class DocExample:
    """A runnable example and the output the page promises for it."""

    page: str
    line: int  # the example's line, or the output's when it has no example
    code: str | None  # the python block; None for a script or an orphan output
    script: str | None  # examples/NAME.py for "Output of `python examples/NAME.py`:"
    expected: str
    error: str | None = None  # why the page breaks the convention

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def parse_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, with the prose before each."""
    blocks: list[Block] = []
    lines = text.splitlines()
    prose: list[str] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            prose.append(lines[index])
            index += 1
            continue
        indent = opening["indent"]
        body: list[str] = []
        start = index
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            line = lines[index]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            index += 1
        index += 1  # the closing fence
        blocks.append(Block(opening["lang"], start + 1, "\n".join(body) + "\n",
                            "\n".join(prose).strip()))
        prose = []
    return blocks


def find_examples(page: str, text: str) -> list[DocExample]:
    """Every output block of a page, paired with the example that prints it."""
    examples = []
    blocks = parse_blocks(text)
    for position, block in enumerate(blocks):
        paragraphs = re.split(r"\n\s*\n", block.before)
        intro = paragraphs[-1]
        if not intro.startswith("Output"):
            continue
        if block.lang != "text":
            examples.append(DocExample(
                page, block.line, None, None, block.text,
                error=f"{page}:{block.line}: an output block must be fenced as ```text, "
                      f"not ```{block.lang}"))
            continue
        script = _SCRIPT.match(intro)
        if script is not None:
            examples.append(DocExample(page, block.line, None, script["path"], block.text))
            continue
        previous = blocks[position - 1] if position else None
        if previous is None or previous.lang != "python" or len(paragraphs) > 1:
            examples.append(DocExample(
                page, block.line, None, None, block.text,
                error=f"{page}:{block.line}: an output block with no ```python block right "
                      "before it (only its 'Output' paragraph may stand between them)"))
            continue
        examples.append(DocExample(page, previous.line, previous.text, None, block.text))
    return examples


def _all_examples() -> list[DocExample]:
    examples = []
    for path in PAGES:
        page = path.relative_to(ROOT).as_posix()
        examples.extend(find_examples(page, path.read_text(encoding="utf-8")))
    return examples


EXAMPLES = _all_examples()


def _normalise(output: str) -> list[str]:
    """Lines with trailing whitespace stripped, and no trailing blank lines."""
    lines = [line.rstrip() for line in output.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _run(example: DocExample, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if example.script is not None:
        command = [sys.executable, "-W", "error", str(ROOT / example.script)]
    else:
        assert example.code is not None
        source = tmp_path / "example.py"
        source.write_text(example.code, encoding="utf-8")
        command = [sys.executable, "-W", "error", str(source)]
    # -W error: an example that warns fails, as a test would under filterwarnings=error.
    env = dict(os.environ)
    # This checkout first, whatever is installed; the temp dir as cwd keeps the
    # example from importing anything else that lies next to it.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    try:
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=EXAMPLE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raw: str | bytes | None = exc.stdout
        output = raw.decode(errors="replace") if isinstance(raw, bytes) else raw or ""
        pytest.fail(f"{example.id}: did not finish within {EXAMPLE_TIMEOUT} s:\n{output}")


def test_pages_have_examples() -> None:
    """The parser finds the pages' examples (a broken parser cannot pass by finding none)."""
    pages = {example.page for example in EXAMPLES}
    assert {"README.md", "docs/events.md", "docs/guarding.md", "docs/testing.md",
            "docs/embedding.md", "docs/quickstart.md"} <= pages


def test_orphan_output_is_reported() -> None:
    """An output block not right after a python block, or not ```text, is an error."""
    page = "\n".join([
        "Intro.", "", "```python", "print(1)", "```", "", "Output:", "", "```text", "1",
        "```", "", "Some prose moved between.", "", "```python", "print(2)", "```", "",
        "A paragraph in between.", "", "Output:", "", "```text", "2", "```", "",
        "Output:", "", "```text", "3", "```", "", "```text", "a signature, not output",
        "```", "", "```python", "print(4)", "```", "", "Output:", "", "```console", "4",
        "```", "",
    ])
    found = find_examples("page.md", page)
    assert [(e.line, e.code, e.error is None) for e in found] == [
        (3, "print(1)\n", True), (23, None, False), (29, None, False), (43, None, False)]


def test_script_output_is_paired_with_its_script() -> None:
    """'Output of `python examples/x.py`:' pairs its block with that script."""
    page = "Output of `python examples/demo_x.py`:\n\n```text\nhi\n```\n"
    [example] = find_examples("page.md", page)
    assert (example.script, example.code, example.error) == ("examples/demo_x.py", None, None)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: example.id)
def test_doc_example_output(example: DocExample, tmp_path: Path) -> None:
    """The page's example runs and prints exactly the output shown under it."""
    if example.error is not None:
        pytest.fail(example.error)
    if example.script is not None:
        assert (ROOT / example.script).is_file(), f"{example.id}: no {example.script}"
    result = _run(example, tmp_path)
    assert result.returncode == 0, (
        f"{example.id}: exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}")
    actual = _normalise(result.stdout)
    expected = _normalise(example.expected)
    assert actual == expected, (
        f"{example.id}: the output differs from the page's\n--- page ---\n"
        + "\n".join(expected) + "\n--- actual ---\n" + "\n".join(actual)
        + (f"\n--- stderr ---\n{result.stderr}" if result.stderr else ""))
