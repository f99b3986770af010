"""What an actor that recovers from a crash answers, and the seam tests crash it through."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RESTARTED", "ArmCrash", "InjectedCrash"]


@dataclass(frozen=True, slots=True)
class ArmCrash:
    """Test seam: raise an injected crash at the start of the next ``times`` messages."""

    times: int


class _Restarted:
    """The reply of an actor that crashed on the caller's message and was restarted.

    The caller may retry the message on the restarted actor (it was not applied).
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "RESTARTED"


RESTARTED = _Restarted()


class InjectedCrash(RuntimeError):
    """The crash raised through the test seam."""
