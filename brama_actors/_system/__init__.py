"""A running system as users see it: the facade, how it starts and stops, the default.

``_facade`` holds the public methods ``Brama`` and ``Client`` share; ``_brama`` builds a
system (context, supervisor, event hub, local authority) and tears it down;
``_default`` is the system behind the module-level functions; ``_monitor`` the
``ConnectionMonitor`` actor base class.
"""
