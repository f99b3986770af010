"""The command line behind ``python -m brama_actors``: ``demo`` and ``watch``."""
