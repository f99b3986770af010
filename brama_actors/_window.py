"""The rate window: the outcomes a closed circuit's rate rules read (API.md section 12).

Two kinds, one interface (``record``, ``add_successes``, ``figures``, ``clear``):

* :class:`CountWindow`: the last ``size`` outcomes, one byte each in a ring, with running
  totals, so recording is O(1) whatever the size.
* :class:`TimeWindow`: the outcomes of the last ``size`` ms, counted in at most
  ``BUCKETS`` + 1 buckets of ``ceil(size / BUCKETS)`` ms, so memory is bounded whatever
  the call rate. An outcome counts while its bucket started less than ``size`` ms ago:
  for between ``size - width + 1`` and ``size`` ms (exactly ``size`` when ``size <=
  BUCKETS``); never once it is older than ``size``.

A window belongs to one connection's actor, which alone records into it; readers in
other threads call ``figures`` (a time window keeps its buckets in one tuple replaced
whole, a count window's figures are copied into the published status).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from brama_actors._config import Settings

__all__ = ["BUCKETS", "FAILED", "SLOW", "CountWindow", "TimeWindow", "Window", "window_for"]

#: Outcome codes, or-ed: a success is 0.
FAILED = 1
SLOW = 2

#: Buckets a time window is divided into.
BUCKETS = 20

#: (calls, failures, slow calls)
Figures = tuple[int, int, int]


class CountWindow:
    """The last ``size`` outcomes."""

    __slots__ = ("_next", "_ring", "calls", "failures", "size", "slow")
    timed = False
    width = 0  # no buckets

    def __init__(self, size: int) -> None:
        self.size = size
        self._ring = bytearray(size)
        self._next = 0
        self.calls = self.failures = self.slow = 0

    def record(self, code: int, now: int) -> None:
        """Add one outcome (``FAILED``/``SLOW`` bits), evicting the oldest if full."""
        ring = self._ring
        at = self._next
        if self.calls == self.size:
            old = ring[at]
            self.failures -= old & FAILED
            self.slow -= old >> 1
        else:
            self.calls += 1
        ring[at] = code
        self.failures += code & FAILED
        self.slow += code >> 1
        self._next = (at + 1) % self.size

    def add_successes(self, count: int, now: int) -> None:
        """Add ``count`` fast successes at ``now`` (quiet successes being folded in)."""
        for _ in range(min(count, self.size)):
            self.record(0, now)

    def figures(self, now: int) -> Figures:
        """(calls, failures, slow calls) in the window."""
        return self.calls, self.failures, self.slow

    def clear(self) -> None:
        """Forget every outcome."""
        if self.calls:
            self._ring = bytearray(self.size)
            self._next = 0
            self.calls = self.failures = self.slow = 0


class TimeWindow:
    """The outcomes of the last ``size`` ms, in buckets of ``width`` ms."""

    __slots__ = ("buckets", "size", "width")
    timed = True

    def __init__(self, size: int) -> None:
        self.size = size
        self.width = -(-size // BUCKETS)
        # (bucket index, calls, failures, slow), oldest first; replaced whole.
        self.buckets: tuple[tuple[int, int, int, int], ...] = ()

    def _live(self, now: int) -> tuple[tuple[int, int, int, int], ...]:
        cutoff = now - self.size
        width = self.width
        buckets = self.buckets
        if buckets and buckets[0][0] * width <= cutoff:
            return tuple(b for b in buckets if b[0] * width > cutoff)
        return buckets

    def record(self, code: int, now: int) -> None:
        """Add one outcome at ``now``."""
        self._add(now, 1, code & FAILED, code >> 1)

    def add_successes(self, count: int, now: int) -> None:
        """Add ``count`` fast successes at ``now``."""
        if count:
            self._add(now, count, 0, 0)

    def _add(self, now: int, calls: int, failures: int, slow: int) -> None:
        live = self._live(now)
        index = now // self.width
        if live and live[-1][0] == index:
            last = live[-1]
            self.buckets = (*live[:-1], (last[0], last[1] + calls, last[2] + failures,
                                         last[3] + slow))
        elif not live or live[-1][0] < index:
            self.buckets = (*live, (index, calls, failures, slow))
        else:
            # An earlier time than the newest bucket's (outcomes reach the actor in the
            # order it gets them, not always the order they happened): its own bucket.
            buckets = list(live)
            at = 0
            while at < len(buckets) and buckets[at][0] < index:
                at += 1
            if at < len(buckets) and buckets[at][0] == index:
                b = buckets[at]
                buckets[at] = (index, b[1] + calls, b[2] + failures, b[3] + slow)
            elif index * self.width > now - self.size:
                buckets.insert(at, (index, calls, failures, slow))
            self.buckets = tuple(buckets)

    def figures(self, now: int) -> Figures:
        """(calls, failures, slow calls) of the outcomes still in the window at ``now``."""
        calls = failures = slow = 0
        for _, c, f, s in self._live(now):
            calls += c
            failures += f
            slow += s
        return calls, failures, slow

    def clear(self) -> None:
        """Forget every outcome."""
        self.buckets = ()


Window = CountWindow | TimeWindow


def window_for(settings: Settings, window: Window | None) -> Window | None:
    """The window a connection with ``settings`` records into: ``window`` itself while
    its kind and size still fit, a new empty one when they changed, None without a
    rate rule."""
    if not settings.windowed:
        return None
    kind = TimeWindow if settings.window_type == "time" else CountWindow
    if type(window) is kind and window.size == settings.window_size:
        return window
    return kind(settings.window_size)
