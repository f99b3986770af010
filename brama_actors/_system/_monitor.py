"""``ConnectionMonitor``: the seed spec's ``MyApp.ConnectionMonitor``, done the Pykka way.

Subclass it, say what to watch in ``subscribe = dict(events=[...])`` (or pass
``subscribe=`` to ``start``), and override ``handle_event``. It subscribes when it starts
and unsubscribes when it stops; events arrive as ordinary actor messages, so the
monitor handles them one at a time in its own thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import pykka

from brama_actors._delivery._subscription import Subscription
from brama_actors._errors import BramaError
from brama_actors._events import Event
from brama_actors._system import _default
from brama_actors._system._brama import Brama

__all__ = ["ConnectionMonitor"]

logger = logging.getLogger("brama_actors")

_ALLOWED = frozenset({"events", "connection", "scope", "filter", "batch_size",
                      "batch_timeout", "max_pending"})


class ConnectionMonitor(pykka.ThreadingActor):
    """A Pykka actor that receives brama events through ``handle_event``.

    Args:
        brama: the system to watch (default: the default system).
        subscribe: subscription filters (``events``, ``connection``, ``scope``,
            ``filter``, ``batch_size``, ``batch_timeout``, ``max_pending``); defaults to
            the class attribute ``subscribe``.

    Raises:
        TypeError: ``subscribe`` has an option that is not a filter.
    """

    #: Runs on a daemon thread, so a monitor someone forgot to stop cannot hang exit.
    use_daemon_thread = True

    #: Default subscription filters for the subclass, e.g. ``dict(events=["state_change"])``.
    subscribe: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, *, brama: Brama | None = None,
                 subscribe: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        options = dict(type(self).subscribe if subscribe is None else subscribe)
        unknown = set(options) - _ALLOWED
        if unknown:
            raise TypeError(
                f"subscribe= takes filters {sorted(_ALLOWED)}, got {sorted(unknown)}")
        self.brama = brama
        self.subscription_options = options
        self.subscription: Subscription | None = None

    def on_start(self) -> None:
        brama = self.brama if self.brama is not None else _default.get()
        self.brama = brama
        self.subscription = brama.subscribe(subscriber=self.actor_ref,
                                            **self.subscription_options)

    def on_stop(self) -> None:
        self._unsubscribe()

    def on_failure(self, *exc_info: Any) -> None:
        self._unsubscribe()

    def _unsubscribe(self) -> None:
        subscription, self.subscription = self.subscription, None
        if subscription is not None and self.brama is not None:
            try:
                self.brama.unsubscribe(subscription)
            except BramaError:
                pass  # the system is already gone

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, tuple) and len(message) == 2:
            tag, payload = message
            if tag == "brama_event":
                self._dispatch(payload)
                return None
            if tag == "brama_events":
                for event in payload:
                    self._dispatch(event)
                return None
        return self.on_other_message(message)

    def _dispatch(self, event: Event) -> None:
        # A raising handle_event must not stop the monitor (Pykka would, for a tell).
        try:
            self.handle_event(event)
        except Exception:
            logger.exception("%s.handle_event raised on %s", type(self).__name__,
                             event.event.value)

    def handle_event(self, event: Event) -> None:
        """Handle one event. Override this."""

    def on_other_message(self, message: Any) -> Any:
        """Messages that are not brama events; override to handle your own."""
        return super().on_receive(message)
