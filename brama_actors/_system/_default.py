"""The default system behind the module-level functions.

Started lazily on first use, stopped at interpreter exit. Our threads are daemon threads,
so a program that forgets to stop still exits (RESEARCH.md: CPython joins non-daemon
threads before atexit handlers run).
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from brama_actors._errors import BramaError
from brama_actors._system._brama import Brama

_lock = threading.RLock()
_default: Brama | None = None


def get() -> Brama:
    """The running default system, started on first use."""
    global _default
    brama = _default
    if brama is not None and not brama.stopped:
        return brama
    with _lock:
        if _default is None or _default.stopped:
            _default = Brama.start()
        return _default


def start(**config: Any) -> Brama:
    """Start the default system explicitly.

    Raises:
        BramaError: it is already running.
        InvalidConfiguration: a bad option.
    """
    global _default
    with _lock:
        if _default is not None and not _default.stopped:
            raise BramaError("the default brama_actors system is already running")
        _default = Brama.start(**config)
        return _default


def stop() -> None:
    """Stop the default system if it runs; the next module-level call starts a fresh one."""
    global _default
    with _lock:
        brama, _default = _default, None
    if brama is not None:
        brama.stop()


def forget(brama: Brama) -> None:
    """Called when ``brama`` stops by itself, so the default is started afresh."""
    global _default
    with _lock:
        if _default is brama:
            _default = None


def current() -> Brama | None:
    """The default system if one is running (never starts one)."""
    return _default


atexit.register(stop)
