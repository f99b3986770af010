"""The frames a node and its clients exchange, by name.

On the wire a frame is a plain tuple, its kind first: requests from a client must pass
an unpickler that refuses every global (``_wire.loads_plain``), so no frame class ever
travels; each end turns tuples into these named frames at once and builds tuples only
through :func:`to_wire`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from brama_actors._remote._ops import OPS
from brama_actors._remote._wire import loads_plain

__all__ = ["EventFrame", "Push", "Reply", "Request", "decode_request", "from_wire", "to_wire"]


class Request(NamedTuple):
    """Client to node: run operation ``op`` with ``args`` (``id`` 0: no reply wanted)."""

    id: int
    op: str
    args: dict[str, Any]


class Reply(NamedTuple):
    """Node to client: the result (``ok``) or the exception of request ``id``."""

    id: int
    ok: bool
    value: Any


class Push(NamedTuple):
    """Node to client: state changes for the replica, numbered to detect gaps.

    ``changes`` holds ``(identifier, scope, state)``, state None for a removal.
    """

    seq: int
    changes: list[tuple[str, str | None, str | None]]


class EventFrame(NamedTuple):
    """Node to client: an event (or a batch) for the client's subscription ``client_id``."""

    client_id: int
    item: Any


_KINDS: dict[str, type[Any]] = {"request": Request, "reply": Reply, "push": Push,
                                 "event": EventFrame}
_NAMES = {kind: name for name, kind in _KINDS.items()}


def to_wire(frame: Request | Reply | Push | EventFrame) -> tuple[Any, ...]:
    """The plain tuple a frame travels as."""
    return (_NAMES[type(frame)], *frame)


def from_wire(data: Any) -> Request | Reply | Push | EventFrame:
    """The named frame of a received tuple (node to client: the client trusts the node).

    Raises:
        ValueError: not a frame.
    """
    if not isinstance(data, tuple) or not data or data[0] not in _KINDS:
        raise ValueError(f"not a frame: {data!r:.200}")
    kind = _KINDS[data[0]]
    try:
        frame: Request | Reply | Push | EventFrame = kind(*data[1:])
    except TypeError:
        raise ValueError(f"malformed {data[0]} frame: {data!r:.200}") from None
    return frame


def decode_request(data: bytes) -> Request:
    """Decode a client's request: plain data only, a known operation, known arguments.

    Raises:
        ValueError: not a well-formed request (the node drops the client).
    """
    frame = from_wire(loads_plain(data))
    if type(frame) is not Request:
        raise ValueError(f"expected a request, got {type(frame).__name__}")
    op = OPS.get(frame.op) if isinstance(frame.op, str) else None
    if (type(frame.id) is not int or op is None or not isinstance(frame.args, dict)
            or not all(isinstance(k, str) for k in frame.args)):
        raise ValueError(f"malformed request {tuple(frame)!r:.200}")
    unknown = set(frame.args) - set(op.params)
    if unknown:
        raise ValueError(f"{frame.op} takes no argument(s) {sorted(unknown)}")
    return frame
