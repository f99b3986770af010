"""The fleet authority: circuits shared by every system started with the same Redis and
namespace (API.md section 16). Loaded only when ``Brama.start(fleet=...)`` is used; it
imports ``redis``.

``_options`` checks the options, ``_link`` holds the clients and key names, ``_lua`` the
one atomic script that applies the rules in Redis (``_lua_window`` its rate window),
``_codec`` the JSON in and out of it, ``_pending`` the quiet successes of windowed
circuits (sent to Redis in batches), ``_replica`` what a system knows of the fleet's
circuits, ``_tail`` the thread that keeps the replica current (paged snapshots, then the
stream) and delivers the fleet's events, ``_ticker`` the thread that expires circuits at
their deadlines while this system holds the ticker lease, ``_unreachable`` what a system
answers without Redis, ``_offline`` what it decides on its own
meanwhile and owes the fleet afterwards, and ``_authority`` the authority protocol over
them.
"""

from brama_actors._authority._fleet._authority import FleetAuthority

__all__ = ["FleetAuthority"]
