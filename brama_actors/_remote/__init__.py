"""Several processes: a node serving a system, clients of it, a node in a child process.

Imported only when used (``serve()``, ``connect()``, ``spawn()``): ``import
brama_actors`` loads neither the socket layer nor cloudpickle. ``_wire`` holds limits,
safe decoding and addresses, ``_ops`` the table of operations, ``_frames`` the named
frames, ``_server``/``_session``/``_service`` the node, ``_link``/``_client`` a client,
``_spawn`` a node in a child process.
"""
