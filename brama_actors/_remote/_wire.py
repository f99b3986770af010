"""The wire between a node and its clients: limits, safe decoding, addresses, sockets.

Every frame is a ``multiprocessing.connection`` message. The HMAC challenge runs both ways
with ``recv_bytes`` before anything is unpickled. After that, what a client sends is
decoded by an unpickler that refuses every global: requests are plain tuples, dicts,
strings and numbers, and can never name a class or function to call. Filter callables,
the one kind of code a client ships, travel as cloudpickle bytes inside a request and
are loaded only for a subscription from an authenticated client.
"""

from __future__ import annotations

import io
import ipaddress
import os
import pickle
import socket
from typing import Any

__all__ = [
    "MAX_FRAME",
    "Address",
    "check_address",
    "encode",
    "family",
    "hang_up",
    "loads_plain",
]

#: The largest frame a node accepts from a client; larger ones drop the client.
MAX_FRAME = 1 << 20

Address = str | tuple[str, int]


class _NoGlobals(pickle.Unpickler):
    """An unpickler that refuses every global: only plain data can come through."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a request")


def loads_plain(data: bytes) -> Any:
    """Unpickle ``data`` refusing every global: only plain data comes through.

    Raises:
        ValueError: undecodable, or it names a class or function.
    """
    try:
        return _NoGlobals(io.BytesIO(data)).load()
    except Exception as exc:
        raise ValueError(f"undecodable frame: {exc!r}") from None


def encode(message: Any) -> bytes:
    """Pickle a message (replies and pushes, node to client)."""
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def check_address(address: Any, allow_remote: bool) -> Address:
    """Validate a serve address: a path, or a loopback ``(host, port)``.

    Raises:
        ValueError: a non-loopback host without ``allow_remote``, or a bad address.
        TypeError: not a str or a (host, port) pair.
    """
    if isinstance(address, str | os.PathLike):
        path = os.fspath(address)
        if not path:
            raise ValueError("address must be a non-empty path")
        return str(path)
    if (isinstance(address, tuple | list) and len(address) == 2
            and isinstance(address[0], str) and type(address[1]) is int):
        host, port = address
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port!r}")
        if not allow_remote and not _is_loopback(host):
            raise ValueError(
                f"host {host!r} is not a loopback address; pass allow_remote=True to serve "
                "beyond this machine")
        return (host, port)
    raise TypeError(f"address must be a socket path or a (host, port) tuple, got {address!r}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def family(address: Address) -> socket.AddressFamily:
    if isinstance(address, str):
        return socket.AF_UNIX
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


def hang_up(conn: Any) -> None:
    """Close a connection so that a thread blocked reading it wakes up (EOF).

    Closing the descriptor alone does not wake a blocked ``recv`` on Linux; shutting the
    socket down does.
    """
    try:
        waker = socket.socket(fileno=os.dup(conn.fileno()))
    except (OSError, ValueError):
        waker = None
    if waker is not None:
        try:
            waker.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        waker.close()
    try:
        conn.close()
    except OSError:
        pass
