"""What a fleet system does without its Redis, and what it refuses.

``when_unreachable="local"`` decides the ops of ``LOCAL_OPS`` here, with the shared
rules, from the last fleet state; ``"hold"`` answers reads from ``HoldViews`` (the last
fleet state, then ``when_stale``). Rate windows are refused on a fleet until phase 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from brama_actors import _rules as rules
from brama_actors._authority._fleet._replica import Entry
from brama_actors._config import Settings
from brama_actors._errors import InvalidConfiguration, SystemStopped
from brama_actors._keys import Key

__all__ = ["LOCAL_OPS", "HoldViews", "StoppedViews", "Verdict", "refuse_rate_rules"]


def refuse_rate_rules(settings: Settings) -> None:
    """Rate windows are not on a fleet yet (phase 2): refuse them, honestly.

    Raises:
        InvalidConfiguration: a failure-rate or slow-call-rate rule.
    """
    if settings.windowed:
        raise InvalidConfiguration(
            "failure_rate_threshold and slow_call_rate_threshold are not supported on a "
            "fleet yet (fleet=): rate windows in Redis are planned, got "
            f"failure_rate_threshold={settings.failure_rate_threshold!r}, "
            f"slow_call_rate_threshold={settings.slow_call_rate_threshold!r}")


class HoldViews(Mapping[Key, Any]):
    """``when_unreachable="hold"``: the last fleet state, then ``when_stale`` for all."""

    def __init__(self, entries: dict[Key, Entry], until: float, verdict: Any,
                 monotonic: Callable[[], float]) -> None:
        self._entries = entries
        self._until = until
        self._verdict = verdict
        self._monotonic = monotonic

    def get(self, key: Any, default: Any = None) -> Any:
        if self._monotonic() > self._until:
            return self._verdict
        return self._entries.get(key, default)

    def __getitem__(self, key: Key) -> Any:
        view = self.get(key)
        if view is None:
            raise KeyError(key)
        return view

    def __iter__(self) -> Iterator[Key]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class StoppedViews(dict[Key, Any]):
    """The views of a stopped system: every lookup raises."""

    def get(self, key: Any, default: Any = None) -> Any:
        raise SystemStopped("this Brama system is stopped")


class Verdict:
    """The view of every key once the last fleet state is stale ("hold" mode)."""

    __slots__ = ("available", "quiet", "slow", "state")

    def __init__(self, available: bool) -> None:
        self.available = available
        self.quiet = False
        self.slow = None
        self.state = "stale"


def _failure_op(args: dict[str, Any]) -> rules.Input:
    return rules.Failure(args.get("reason"))


def _success_op(args: dict[str, Any]) -> rules.Input:
    return rules.Success()


def _open_op(args: dict[str, Any]) -> rules.Input:
    return rules.Open(args.get("reason"), args.get("expiry"))


#: Ops decided here when Redis does not answer (``when_unreachable="local"``).
LOCAL_OPS: dict[str, Callable[[dict[str, Any]], rules.Input]] = {
    "failure": _failure_op, "success": _success_op, "open": _open_op,
    "close": lambda args: rules.Close(args.get("reason")),
    "reset": lambda args: rules.Reset(args.get("reason")),
}
