"""A running system: the ``Brama`` facade, its connection actors, supervisor and default.

``_brama`` is the facade and the internals its actors share, ``_connection`` the actor
that owns one circuit, ``_supervisor`` restarts them, ``_messages`` what they are told,
``_default`` the system behind the module-level functions.
"""
