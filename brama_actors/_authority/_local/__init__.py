"""The local authority: one connection actor per circuit, in this process.

``_cell`` is what it publishes per connection, ``_actor`` the actor that owns one
circuit (and the messages it takes), ``_authority`` the implementation of the
authority protocol over them (calls, admission, the cleanup sweep).
"""

from brama_actors._authority._local._authority import LocalAuthority
from brama_actors._authority._local._cell import Cell

__all__ = ["Cell", "LocalAuthority"]
