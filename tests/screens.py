"""What the watch tests read: a command's output, screen by screen, without sleeping."""

from __future__ import annotations

import io
import threading


class Screens(io.StringIO):
    """Collects watch's output and wakes the test on every flush (``flushed``)."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed = threading.Condition()

    def flush(self) -> None:
        with self.flushed:
            self.flushed.notify_all()
