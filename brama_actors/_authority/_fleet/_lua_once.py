"""Request ids in Lua: the part of the fleet's script that applies a request once.

A reply can be lost after the script ran: the server or a proxy closes the connection
between running the script and delivering its reply (``_roundtrip`` retries then, once,
with the same request). Running the step again would count a failure twice and append
a second stream entry. So a step that changes a circuit carries a *request id*, and the
script keeps the step's reply under it for a short while: a request that arrives again
gets the reply it was given the first time, and nothing is applied.

Where the reply is kept, and why there: one key per request, ``{ns}:r:<request id>``
(KEYS, last: under the namespace's hash tag and declared, so a Redis Cluster routes the
script to the slot that holds it, and an ACL limited to ``~{ns}:*`` covers it), holding
the reply as JSON (only JSON goes into Redis, API.md section 16; a reply is a flat array
of strings and integers below 10^14, which cjson keeps exactly), expiring ``ARGV[8]`` ms
after the step (set by the sender: several of its ``fleet_timeout``, longer than any
retry of that request can come).

The first design, "the last request id per system in the circuit's hash", is not
enough: two threads of one system step the same circuit at once (the second's id
overwrites the first's before the first retries), and every system that ever stepped a
circuit would leave a field behind in it (pods come and go). A key per request has
neither problem: concurrent requests never share a record, and records expire on their
own whoever wrote them, so the fleet keeps about (steps per second x their lifetime)
of them, whatever the number of systems that came and went.

Spliced in last (``_lua.SCRIPT``): it wraps ``dispatch``, the op the script was asked,
so no op knows about request ids. A step without a request id (``ARGV[8]`` empty: the
ops that are idempotent by themselves, ``_link.RECORDED``) runs as before.
"""

from __future__ import annotations

__all__ = ["ONCE"]

ONCE = r"""
local record_ms = ARGV[8]
if record_ms == nil or record_ms == '' then
  return dispatch()
end
local RECORD = KEYS[#KEYS]
local seen = redis.call('GET', RECORD)
if seen then
  return cjson.decode(seen)
end
local reply = dispatch()
redis.call('SET', RECORD, cjson.encode(reply), 'PX', record_ms)
return reply
"""
