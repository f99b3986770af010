"""The operations a node answers: one table that both ends read.

The node's dispatch (``_service.NodeService``, whose methods are checked against this
table when the module loads), the client's calls (``_link.Link.call`` refuses an
operation or argument not listed here before anything is sent) and the list of what a
request may name (``_frames.decode_request``) all come from :data:`OPS`. Adding an
operation is one entry here and one method on the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from brama_actors._config import CONNECTION_OPTIONS

__all__ = ["OPS", "Op"]

_CONNECTION = ("identifier", "scope")
_OPTIONS = tuple(sorted(CONNECTION_OPTIONS))


@dataclass(frozen=True, slots=True)
class Op:
    """One operation.

    Attributes:
        name: what a request names.
        params: the argument names a request may carry (all optional on the wire; the
            service's own signature says which it needs).
        oneway: no reply is sent (the client does not wait).
    """

    name: str
    params: tuple[str, ...]
    oneway: bool = False


OPS: Mapping[str, Op] = {op.name: op for op in (
    Op("hello", ()),
    Op("ping", ()),
    Op("register", (*_CONNECTION, "type", *_OPTIONS, "metadata")),
    Op("unregister", _CONNECTION),
    Op("success", (*_CONNECTION, "metadata", "duration"), oneway=True),
    Op("failure", (*_CONNECTION, "reason", "metadata", "duration")),
    # A guarded call refused by the client's replica, or an outcome recorded as nothing.
    Op("tally", (*_CONNECTION, "what"), oneway=True),
    Op("status", _CONNECTION),
    Op("connections", ("scope",)),
    Op("open_circuit", (*_CONNECTION, "reason", "expiry")),
    Op("close_circuit", (*_CONNECTION, "reason")),
    Op("reset_circuit", (*_CONNECTION, "reason")),
    Op("configure", (*_CONNECTION, "options")),
    Op("subscribe", ("client_id", "events", "connection", "scope", "filter", "batch_size",
                     "batch_timeout", "max_pending")),
    Op("unsubscribe", ("ids",)),
    Op("drain", ("timeout",)),
    Op("admit", (*_CONNECTION, "register", "kind", "options", "metadata")),
    Op("settle", (*_CONNECTION, "verdict", "reason", "trial", "duration")),
)}
