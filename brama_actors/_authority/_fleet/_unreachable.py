"""What a fleet system does without its Redis.

``when_unreachable="local"`` decides the ops of ``LOCAL_OPS`` here, with the shared
rules, from the last fleet state; ``"hold"`` answers reads from ``HoldViews`` (the last
fleet state, then ``when_stale``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from brama_actors import _rules as rules
from brama_actors._authority._fleet._codec import args_reason
from brama_actors._authority._fleet._replica import Entry
from brama_actors._errors import SystemStopped
from brama_actors._keys import Key

__all__ = ["LOCAL_OPS", "HoldViews", "StoppedViews", "Verdict"]


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


def _failure_op(args: dict[str, Any], metadata: Mapping[str, Any] | None) -> rules.Input:
    return rules.Failure(args_reason(args), metadata, duration=args.get("duration"))


def _success_op(args: dict[str, Any], metadata: Mapping[str, Any] | None) -> rules.Input:
    return rules.Success(metadata, duration=args.get("duration"))


def _open_op(args: dict[str, Any], metadata: Mapping[str, Any] | None) -> rules.Input:
    return rules.Open(args_reason(args), args.get("expiry"))


#: Ops decided here when Redis does not answer (``when_unreachable="local"``), from the
#: step's args and the call's metadata.
LOCAL_OPS: dict[str, Callable[[dict[str, Any], Mapping[str, Any] | None], rules.Input]] = {
    "failure": _failure_op, "success": _success_op, "open": _open_op,
    "close": lambda args, _: rules.Close(args_reason(args)),
    "reset": lambda args, _: rules.Reset(args_reason(args)),
}
