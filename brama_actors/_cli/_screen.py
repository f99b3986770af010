"""Drawing one screen of a live view, and knowing when the view is over.

Shared by ``watch`` (a served system) and ``watch --fleet`` so both redraw and end alike.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import TextIO

__all__ = ["show"]


def show(out: TextIO, screen: str, args: argparse.Namespace, *, tty: bool,
         stop: threading.Event | None, ends: float | None) -> bool:
    """Draw ``screen`` (in place on a terminal, else after a blank line); True when the
    view is over: ``--once``, ``stop`` set, or ``--duration`` (``ends``, monotonic) passed."""
    if tty and not args.once:
        out.write("\x1b[H\x1b[2J")
    elif not args.once:
        out.write("\n")
    out.write(screen + "\n")
    out.flush()
    return bool(args.once or (stop is not None and stop.is_set())
                or (ends is not None and time.monotonic() >= ends))
