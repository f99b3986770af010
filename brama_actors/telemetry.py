"""Telemetry in the manner of Erlang's ``:telemetry`` (docs/events.md (telemetry)).

Every event fires ``("brama", "connection", <event type>)`` with measurements
``system_time`` (and ``duration`` in ms spent in the previous state, on
``state_change``) and metadata ``connection``, ``scope``, ``data``. Supervisor restarts
fire ``("brama", "supervisor", "restart")``; handler failures of subscriptions fire
``("brama", "subscriber", "failure")``. A fleet system fires ``("brama", "fleet",
"unreachable" | "restored")`` when its link to Redis changes, and ``("brama", "fleet",
"gap")`` when it resynced past stream entries it can no longer deliver (an addition to
API.md section 16). Handlers are process-wide and run in a
per-system telemetry thread, never inside an actor. A handler that raises is detached
and reported as ``("brama", "telemetry", "handler_failure")``.
"""

from brama_actors._delivery._telemetry import attach, detach, handlers

__all__ = ["attach", "detach", "handlers"]
