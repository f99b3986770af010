"""One authenticated client on the node: its reader and writer threads.

The reader decodes requests in order and hands each to the node's service, then sends
the reply itself when nothing is queued before it (one thread hand-off less per round
trip). The writer sends replica pushes, events and the replies queued behind them from a
bounded queue, so a slow client never blocks the event manager. What the session holds
for its client (subscriptions, trial permits) is the service's, given back on close.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from pykka import ThreadingFuture

from brama_actors._errors import BramaError
from brama_actors._remote._frames import Reply, decode_request, to_wire
from brama_actors._remote._ops import OPS
from brama_actors._remote._wire import MAX_FRAME, encode, hang_up

if TYPE_CHECKING:
    from brama_actors._remote._server import Node
    from brama_actors._remote._service import NodeService

__all__ = ["MAX_QUEUE", "Session"]

logger = logging.getLogger("brama_actors")

#: Messages queued for one client before it is dropped as too slow.
MAX_QUEUE = 200_000


class Session:
    """The transport of one authenticated client connection."""

    def __init__(self, node: Node, conn: Connection, number: int) -> None:
        from brama_actors._remote._service import NodeService

        self.node = node
        self.conn = conn
        self.name = f"{node.name}-client-{number}"
        self.closed = False
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[Any] = collections.deque()
        self._sending = False  # the writer (or an inline reply) is sending
        self._send_lock = threading.Lock()
        self.service: NodeService = NodeService(self)
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-reader",
                                        daemon=True)
        self._writer = threading.Thread(target=self._write, name=f"{self.name}-writer",
                                        daemon=True)

    def start(self) -> None:
        self._writer.start()
        self._reader.start()

    # -- outgoing ------------------------------------------------------------------------
    def enqueue(self, message: Any) -> bool:
        """Queue a frame tuple (or a marker future) for the writer; False once closed."""
        with self._cond:
            if self.closed:
                return False
            if len(self._queue) >= MAX_QUEUE:
                too_slow = True
            else:
                self._queue.append(message)
                self._cond.notify()
                too_slow = False
        if too_slow:
            logger.warning("%s fell %d messages behind; dropping it", self.name, MAX_QUEUE)
            self.close()
            return False
        return True

    def marker(self) -> ThreadingFuture[None]:
        """A future resolved once everything queued before it has been sent."""
        future: ThreadingFuture[None] = ThreadingFuture()
        if not self.enqueue(future):
            future.set(None)
        return future

    def reply(self, data: bytes) -> None:
        """Send an encoded reply from the reader thread, inline when nothing is queued.

        Saves the hand-off to the writer thread on the request/reply path, while a reply
        still never overtakes events queued before it (``drain`` relies on that).
        """
        with self._cond:
            if self.closed:
                return
            if self._queue or self._sending:
                # Behind other messages: the same bound as everything else queued.
                if len(self._queue) < MAX_QUEUE:
                    self._queue.append(data)
                    self._cond.notify()
                    return
                too_slow = True
            else:
                too_slow = False
                self._sending = True
        if too_slow:
            logger.warning("%s fell %d messages behind; dropping it", self.name, MAX_QUEUE)
            self.close()
            return
        try:
            with self._send_lock:
                self.conn.send_bytes(data)
        except (OSError, ValueError, TypeError):  # TypeError: closed under us
            self.close()
        finally:
            with self._cond:
                self._sending = False
                if self._queue:
                    self._cond.notify()

    def _write(self) -> None:
        while True:
            with self._cond:
                while (not self._queue or self._sending) and not self.closed:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._sending = True
            try:
                with self._send_lock:
                    for message in batch:
                        if isinstance(message, ThreadingFuture):
                            message.set(None)
                            continue
                        if isinstance(message, bytes):  # a reply, encoded by the reader
                            self.conn.send_bytes(message)
                            continue
                        try:
                            data = encode(message)
                        except Exception:
                            logger.exception("%s: cannot send a %s frame; skipped",
                                             self.name, message[0])
                            continue
                        self.conn.send_bytes(data)
            except (OSError, ValueError, TypeError):  # TypeError: closed under us
                self.close()
                # Nobody will send these: release anyone draining on them.
                with self._cond:
                    batch.extend(self._queue)
                    self._queue.clear()
                for message in batch:
                    if isinstance(message, ThreadingFuture):
                        with contextlib.suppress(Exception):
                            message.set(None)
                return
            finally:
                with self._cond:
                    self._sending = False

    # -- incoming ------------------------------------------------------------------------
    def _read(self) -> None:
        try:
            while not self.closed:
                try:
                    data = self.conn.recv_bytes(MAX_FRAME)
                except EOFError:
                    return  # a clean close between frames
                except TypeError:
                    return  # close() closed the connection under us (its handle is None)
                except OSError as exc:
                    if not self.closed:
                        logger.warning("%s: connection lost (%s); dropping it", self.name, exc)
                    return
                try:
                    request = decode_request(data)
                except ValueError as exc:
                    logger.warning("%s sent a bad request (%s); dropping it", self.name, exc)
                    return
                self._dispatch(request.id, request.op, request.args)
        finally:
            self.close()

    def _dispatch(self, request_id: int, op: str, args: dict[str, Any]) -> None:
        try:
            result = self.service.dispatch(request_id, op, args)
        except Exception as exc:  # every error goes back to the client
            result, ok = exc, False
        else:
            ok = True
        if result is NO_REPLY or OPS[op].oneway:
            return
        try:  # encoded once, here: a result that cannot be pickled becomes an error
            data = encode(to_wire(Reply(request_id, ok, result)))
        except Exception:
            data = encode(to_wire(Reply(request_id, False, BramaError(repr(result)))))
        self.reply(data)

    # -- ending --------------------------------------------------------------------------
    def close(self) -> None:
        """Disconnect; the service gives back what the client held. Idempotent."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
        self.node.publisher.leave(self)
        hang_up(self.conn)
        self.service.close()
        self.node.forget(self)  # last: `clients` drops once the cleanup is done

    def join(self, timeout: float) -> None:
        for thread in (self._reader, self._writer):
            if thread is not threading.current_thread() and thread.ident is not None:
                thread.join(timeout)


#: An operation's result that means "the reply is sent elsewhere" (``hello``).
NO_REPLY: Any = object()
