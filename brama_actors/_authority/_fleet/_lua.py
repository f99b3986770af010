"""The fleet's one Lua script: the circuit rules of API.md sections 3, 4 and 12
(``success_threshold``, ``half_open_timeout``, rate windows: ``_lua_window``) applied
atomically in Redis.

It mirrors ``brama_actors._rules`` (the pure rules every other authority applies) and
is checked against the same reference model (``tests/test_model.py``, fleet machine).
Each call is one *step* on one circuit, plus the expiry that was due on it first: it
reads ``now`` from ``TIME`` (or a test's fixed ``now``), writes the circuit hash, moves
its deadline in the deadline set and appends the step's events to the stream as one
entry, numbered by ``ver`` (one per entry, fleet-wide), in the same atomic script.

Keys (all under the one hash tag ``{ns}``, so Redis Cluster keeps them in one slot):
KEYS[1] the circuit hash, KEYS[2] the stream, KEYS[3] the meta hash (``ver``),
KEYS[4] the deadline set, KEYS[5] the circuit's permit set, KEYS[6] the circuit index,
KEYS[7] the activity set (score: the circuit's last activity anywhere, ms; ``_sweep``),
and last, for a step with a request id, its record (``_lua_once``).
``tick`` and ``sweep`` also reach circuit hashes named by the deadline set (the same slot).

ARGV: op, now ("" for TIME), args JSON, op metadata (raw JSON, never decoded here, ""
for none), connection metadata (raw JSON, register only), explicit options (raw JSON,
register/configure only), stream MAXLEN, the request's record lifetime in ms (``_lua_once``;
"" or absent for a step without a request id).

Status JSON holds no null: a missing key is ``None`` (cjson's null is awkward in Lua).
Event data flags ``_m = 1`` where the op's metadata goes (added by the reader, so
metadata never passes through cjson and comes back exactly as sent).

A success, failure, manual op or configure may carry ``args.q``, a batch of its
system's quiet successes (``_pending``): folded into the circuit (totals, window)
before the op is decided; the stream entry names it (field ``q``). ``flush`` is a step
that only carries a batch.
"""

from __future__ import annotations

from brama_actors._authority._fleet._lua_once import ONCE
from brama_actors._authority._fleet._lua_window import WINDOW

__all__ = ["SCRIPT"]

_HEAD = r"""
local op = ARGV[1]
local args = cjson.decode(ARGV[3])
local opmeta = ARGV[4]
local maxlen = ARGV[7]
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  redis.replicate_commands()
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local CKEY, STREAM, META, DEADLINES, PERMITS, INDEX, ACTIVITY =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]

local function deadline(st)
  if st.opened_at == nil then return nil end
  if st.state == 'open' then return st.opened_at + st.expiry end
  if st.state == 'half_open' and st.half_open_timeout ~= nil then
    return st.state_changed_at + st.half_open_timeout
  end
  return nil
end

local function opening_expiry(st, fc)
  if st.expiry_strategy == 'fixed' then return st.setting_expiry end
  if st.backoff_factor == 1 then return math.min(st.initial_expiry, st.max_expiry) end
  local len = st.initial_expiry * st.backoff_factor ^ fc
  if len >= st.max_expiry then return st.max_expiry end
  return math.floor(len)
end

local function ev(evs, kind, st, extra)
  local d = {state = st.state, failure_count = st.failure_count}
  if extra then for k, v in pairs(extra) do d[k] = v end end
  evs[#evs + 1] = {kind, d}
end

local function change(st, to)
  local tr = st.transitions
  if tr == nil or tr[1] == nil then tr = {} end
  local found = false
  for _, p in ipairs(tr) do
    if p[1] == st.state and p[2] == to then p[3] = p[3] + 1; found = true end
  end
  if not found then tr[#tr + 1] = {st.state, to, 1} end
  st.transitions = tr
  local prev = st.state
  st.state = to
  st.state_changed_at = now
  st.half_open_successes = 0
  return prev
end

local function state_change(evs, st, prev, reason)
  ev(evs, 'state_change', st, {previous_state = prev, new_state = st.state, reason = reason})
end

"""

_RULES = r"""
-- Every opening clears the rate window.
local function open(st, expiry)
  st.opened_at = now
  st.expiry = expiry or opening_expiry(st, st.failure_count)
  st.half_open_successes = 0
  wclear(st)
end

-- rates: {failures, slow, calls} when a rate rule opened it (the reader divides).
local function opened(evs, st, reason, rates)
  ev(evs, 'circuit_opened', st, {reason = reason, opened_at = st.opened_at, expiry = st.expiry,
                                  _r = rates})
end

-- A trial admitted in an earlier half_open period (another gen): its outcome is void.
local function void(st, gen, trial)
  return trial ~= nil and (st.state ~= 'half_open' or gen ~= trial)
end

-- Returns (events, changed). Mutates st.
local function decide(st, gen, o, a)
  local evs = {}
  if o == 'success' then
    if void(st, gen, a.trial) then return evs, false end
    local extra = {}
    if opmeta ~= '' then extra._m = 1 end
    st.failure_count = 0
    st.last_success_time = now
    st.total_successes = st.total_successes + 1
    if st.state == 'half_open' and st.half_open_successes + 1 < st.success_threshold then
      st.half_open_successes = st.half_open_successes + 1
      ev(evs, 'success', st, extra)
    elseif st.state == 'half_open' then
      local prev = change(st, 'closed')
      ev(evs, 'success', st, extra)
      ev(evs, 'circuit_closed', st, {reason = 'Success in half_open'})
      state_change(evs, st, prev, 'Success in half_open')
    else
      -- Closed: the window records it, and a success can trip a rate rule too.
      local why, rates = nil, nil
      if st.state == 'closed' and windowed(st) then
        wrecord(st, 0, a.duration)
        why, rates = wtrip(st)
      end
      if why == nil then
        ev(evs, 'success', st, extra)
        return evs, true
      end
      local prev = change(st, 'open')
      open(st, nil)
      ev(evs, 'success', st, extra)
      opened(evs, st, why, rates)
      state_change(evs, st, prev, why)
    end
    return evs, true
  elseif o == 'failure' then
    if void(st, gen, a.trial) then return evs, false end
    st.failure_count = st.failure_count + 1
    st.last_failure_time = now
    st.total_failures = st.total_failures + 1
    local extra = {reason = a.reason}
    if opmeta ~= '' then extra._m = 1 end
    local why, rates = nil, nil
    if st.state == 'half_open' then
      why = a.reason
      if why == nil then why = 'Failure in half_open' end
    elseif st.state == 'closed' then
      if windowed(st) then wrecord(st, 1, a.duration) end
      if st.max_attempts > 0 and st.failure_count >= st.max_attempts then
        why = 'Threshold exceeded'
      elseif windowed(st) then
        why, rates = wtrip(st)
      end
    end
    if why == nil then
      ev(evs, 'failure', st, extra)
      return evs, true
    end
    local prev = change(st, 'open')
    open(st, nil)
    ev(evs, 'failure', st, extra)
    opened(evs, st, why, rates)
    state_change(evs, st, prev, why)
    return evs, true
  elseif o == 'expire' then
    local due = deadline(st)
    if due == nil or now < due then return evs, false end
    if st.state == 'half_open' then
      local prev = change(st, 'open')
      open(st, nil)
      opened(evs, st, 'Half-open timeout')
      state_change(evs, st, prev, 'Half-open timeout')
      return evs, true
    end
    local ended_at, ended = st.opened_at, st.expiry
    local prev = change(st, 'half_open')
    ev(evs, 'expiry', st, {opened_at = ended_at, expiry = ended})
    ev(evs, 'circuit_half_opened', st, nil)
    state_change(evs, st, prev, 'Expiry reached')
    return evs, true
  elseif o == 'open' then
    local why = a.reason
    if why == nil then why = 'Manually opened' end
    if st.state == 'open' then
      open(st, a.expiry)
      opened(evs, st, why)
      return evs, true
    end
    local prev = change(st, 'open')
    open(st, a.expiry)
    opened(evs, st, why)
    state_change(evs, st, prev, why)
    return evs, true
  elseif o == 'close' then
    if st.state == 'closed' then return evs, false end
    local why = a.reason
    if why == nil then why = 'Manually closed' end
    local prev = change(st, 'closed')
    ev(evs, 'circuit_closed', st, {reason = why})
    state_change(evs, st, prev, why)
    return evs, true
  elseif o == 'reset' then
    local why = a.reason
    if why == nil then why = 'Manually reset' end
    st.failure_count = 0
    wclear(st)
    if st.state == 'closed' then
      ev(evs, 'circuit_reset', st, {reason = why})
      return evs, true
    end
    local prev = change(st, 'closed')
    ev(evs, 'circuit_reset', st, {reason = why})
    state_change(evs, st, prev, why)
    return evs, true
  elseif o == 'configure' then
    -- New settings apply from the next transition on; status.expiry shows the
    -- configured expiry until the first opening, then the last opening's length.
    -- A window of another kind or size starts empty (as _window.window_for).
    local keep, was, kind, size = st.expiry, windowed(st), st.window_type, st.window_size
    for _, k in ipairs(a.unset) do st[k] = nil end
    for k, v in pairs(a.settings) do st[k] = v end
    st.setting_expiry = a.settings.expiry
    if st.opened_at ~= nil then st.expiry = keep end
    if not windowed(st) or not was or kind ~= st.window_type or size ~= st.window_size then
      wclear(st)
    end
    return evs, true
  elseif o == 'flush' then
    -- Only the batch it carried (folded by step); its successes can trip a rate rule
    -- (their success events were delivered on their own system already).
    if st.state ~= 'closed' or not windowed(st) then return evs, true end
    local why, rates = wtrip(st)
    if why ~= nil then
      local prev = change(st, 'open')
      open(st, nil)
      opened(evs, st, why, rates)
      state_change(evs, st, prev, why)
    end
    return evs, true
  end
  return redis.error_reply('unknown op ' .. tostring(o))
end

-- The reply for a circuit that does not exist, with the fleet's current ver: any entry
-- about it up to that ver is older than its absence.
local function missing()
  return {'missing', '', tonumber(redis.call('HGET', META, 'ver') or '0'), '', 0}
end

local function bump_ver()
  return redis.call('HINCRBY', META, 'ver', 1)
end

-- A reason other than a string travels as raw JSON (args.rr, never decoded here: cjson
-- keeps 14 digits and turns [] into {}); it replaces its marker in the events' JSON.
local function raw_reason(ej)
  local marker, out, i = '"\\u0000r"', {}, 1
  while true do
    local s, e = string.find(ej, marker, i, true)
    if s == nil then break end
    out[#out + 1] = string.sub(ej, i, s - 1)
    out[#out + 1] = args.rr
    i = e + 1
  end
  out[#out + 1] = string.sub(ej, i)
  return table.concat(out)
end

-- Write st, move its deadline, append its events; returns (ver, stream id, st as JSON).
local function commit(ckey, member, st, gen, evs, fields)
  local ver = bump_ver()
  local sj = cjson.encode(st)
  redis.call('HSET', ckey, 'status', sj, 'gen', gen, 'ver', ver)
  local due = deadline(st)
  if due ~= nil then
    redis.call('ZADD', DEADLINES, due, member)
  else
    redis.call('ZREM', DEADLINES, member)
  end
  -- Activity (inactive cleanup, ``_sweep``) is what API.md section 3 names, as locally:
  -- registration, last success or failure, state change; not a configure or a manual
  -- op that changed no state. GT: a test's now may go back.
  if ACTIVITY then
    redis.call('ZADD', ACTIVITY, 'GT', math.max(st.registered_at, st.state_changed_at,
               st.last_success_time or 0, st.last_failure_time or 0), member)
  end
  local ej = cjson.encode(evs)
  if args.rr then ej = raw_reason(ej) end
  local entry = {'v', ver, 'k', member, 't', now, 's', sj, 'g', gen, 'e', ej}
  if fields then for _, f in ipairs(fields) do entry[#entry + 1] = f end end
  local id = redis.call('XADD', STREAM, 'MAXLEN', '~', maxlen, '*', unpack(entry))
  return ver, id, sj
end

-- The circuit's status, gen and ver (the ver of the entry that wrote that status).
local function load(ckey)
  local raw = redis.call('HMGET', ckey, 'status', 'gen', 'ver')
  if not raw[1] then return nil, nil, 0 end
  return cjson.decode(raw[1]), tonumber(raw[2]), tonumber(raw[3] or '0')
end

-- Apply one op to the circuit at ckey: its overdue expiry first (own entry), then op.
-- Returns {code, status json, ver, stream id, gen}.
local function step(ckey, member, o, a, fields)
  local st, gen, held = load(ckey)
  if st == nil then return missing() end
  local ver, id = 0, ''
  local due = deadline(st)
  if due ~= nil and due <= now then
    local prev_state, prev_open = st.state, st.opened_at
    local evs, changed = decide(st, gen, 'expire', {})
    if changed then
      gen = gen + 1
      ver, id = commit(ckey, member, st, gen, evs, nil)
    end
  end
  -- A reply that changed nothing still carries the ver of the status it shows, so the
  -- caller's replica can take it (a caller told "closed" must not keep half_open).
  if o == 'expire' then
    return {'ok', cjson.encode(st), ver ~= 0 and ver or held, id, gen}
  end
  if a.q ~= nil then wfold(st, a.q) end
  local prev_state, prev_open = st.state, st.opened_at
  local evs, changed = decide(st, gen, o, a)
  if not changed and a.q == nil then
    return {'void', cjson.encode(st), ver ~= 0 and ver or held, id, gen}
  end
  if st.state ~= prev_state or st.opened_at ~= prev_open then gen = gen + 1 end
  local sj
  ver, id, sj = commit(ckey, member, st, gen, evs, fields)
  return {'ok', sj, ver, id, gen}
end

local member = args.member

-- The op asked; ``_lua_once`` calls it, once per request id. (Its body keeps the
-- indentation it had at the script's top level.)
local function dispatch()
if op == 'register' then
  local st, gen = load(CKEY)
  if st ~= nil then
    -- Adopting it is activity: a circuit just registered somewhere is not idle.
    if ACTIVITY then redis.call('ZADD', ACTIVITY, 'GT', now, member) end
    local raw = redis.call('HMGET', CKEY, 'meta', 'explicit', 'ver')
    return {'exists', cjson.encode(st), tonumber(raw[3]), raw[1], raw[2], gen}
  end
  st = args.status
  st.registered_at = now
  st.state_changed_at = now
  redis.call('HSET', CKEY, 'meta', ARGV[5], 'explicit', ARGV[6])
  redis.call('DEL', PERMITS)
  redis.call('SADD', INDEX, member)
  local evs = {}
  ev(evs, 'registration', st, nil)
  ev(evs, 'connection_registered', st, nil)
  -- The generation starts at the ver this registration gets (commit bumps it once):
  -- every gen of an earlier registration of the key was at most its last ver, so a
  -- trial fenced by an earlier registration's gen never matches this one.
  local gen = tonumber(redis.call('HGET', META, 'ver') or '0') + 1
  local ver, id, sj = commit(CKEY, member, st, gen, evs, {'cm', ARGV[5], 'x', ARGV[6]})
  return {'ok', sj, ver, id, gen}
elseif op == 'unregister' then
  local st, gen = load(CKEY)
  if st == nil then return missing() end
  redis.call('DEL', CKEY, PERMITS)
  redis.call('ZREM', DEADLINES, member)
  redis.call('SREM', INDEX, member)
  if ACTIVITY then redis.call('ZREM', ACTIVITY, member) end
  local evs = {}
  ev(evs, 'connection_unregistered', st, nil)
  ev(evs, 'connection_removed', st, {reason = 'unregistered'})
  local ver = bump_ver()
  local id = redis.call('XADD', STREAM, 'MAXLEN', '~', maxlen, '*', 'v', ver, 'k', member,
                        't', now, 's', '', 'g', 0, 'e', cjson.encode(evs))
  return {'ok', '', ver, id, 0}
elseif op == 'acquire' then
  local r = step(CKEY, member, 'expire', {}, nil)
  if r[1] == 'missing' then return r end
  local st = cjson.decode(r[2])
  if st.state ~= 'half_open' then
    return {st.state, r[2], r[3], r[4], r[5]}
  end
  local gen = r[5]
  if tonumber(redis.call('HGET', CKEY, 'pgen') or '-1') ~= gen then
    redis.call('DEL', PERMITS)
    redis.call('HSET', CKEY, 'pgen', gen)
  end
  redis.call('ZREMRANGEBYSCORE', PERMITS, '-inf', now)
  if redis.call('ZCARD', PERMITS) >= st.half_open_max_calls then
    return {'full', r[2], r[3], r[4], gen}
  end
  local lease = st.half_open_timeout or args.lease
  redis.call('ZADD', PERMITS, now + lease, args.token)
  redis.call('PEXPIRE', PERMITS, lease)
  return {'trial', r[2], r[3], r[4], gen}
elseif op == 'release' then
  redis.call('ZREM', PERMITS, args.token)
  return {'ok', '', 0, '', 0}
elseif op == 'tick' then
  -- args.upto (tests: the expiries a sweep at that time comes after) defaults to now.
  local due = redis.call('ZRANGEBYSCORE', DEADLINES, '-inf', args.upto or now, 'LIMIT', 0,
                         args.limit)
  local last = ''
  for _, m in ipairs(due) do
    local r = step(args.prefix .. m, m, 'expire', {}, nil)
    if r[1] == 'missing' then
      redis.call('ZREM', DEADLINES, m)
    elseif r[4] ~= '' then
      last = r[4]
    end
  end
  local nxt = redis.call('ZRANGE', DEADLINES, 0, 0, 'WITHSCORES')
  return {now, nxt[2] or '', last, #due}
elseif op == 'sweep' then
  -- Inactive cleanup (``_sweep``, the ticker holder only): remove up to args.limit
  -- circuits whose last activity anywhere (the activity set's score: every step, and
  -- each system's reports of its quiet successes; or the status's own times) is older
  -- than args.threshold, each as unregister does, with its own entry.
  local idle = redis.call('ZRANGEBYSCORE', ACTIVITY, '-inf', '(' .. (now - args.threshold),
                          'WITHSCORES', 'LIMIT', 0, args.limit)
  local last, removed = '', 0
  for i = 1, #idle, 2 do
    local m, score = idle[i], tonumber(idle[i + 1])
    local ckey = args.prefix .. m
    local st = load(ckey)
    if st == nil then
      redis.call('ZREM', ACTIVITY, m)
    else
      local seen = math.max(score, st.registered_at, st.state_changed_at,
                            st.last_success_time or 0, st.last_failure_time or 0)
      if now - seen > args.threshold then
        redis.call('DEL', ckey, ckey .. ':permits')
        redis.call('ZREM', DEADLINES, m)
        redis.call('SREM', INDEX, m)
        redis.call('ZREM', ACTIVITY, m)
        local evs = {}
        ev(evs, 'cleanup', st, {reason = 'inactive'})
        ev(evs, 'connection_removed', st, {reason = 'inactive'})
        local ver = bump_ver()
        last = redis.call('XADD', STREAM, 'MAXLEN', '~', maxlen, '*', 'v', ver, 'k', m,
                          't', now, 's', '', 'g', 0, 'e', cjson.encode(evs))
        removed = removed + 1
      else
        redis.call('ZADD', ACTIVITY, 'GT', seen, m)
      end
    end
  end
  return {now, last, #idle / 2, removed}
elseif op == 'lease' then
  -- The ticker lease (KEYS[1]): taken or renewed by args.me, dropped with args.drop.
  local holder = redis.call('GET', CKEY)
  if args.drop then
    if holder == args.me then redis.call('DEL', CKEY) end
    return {0}
  end
  if holder == false or holder == args.me then
    redis.call('SET', CKEY, args.me, 'PX', args.ttl)
    return {1}
  end
  return {0}
elseif op == 'snapshot' then
  -- The head of a paged snapshot: the stream position and the fleet's ver, read
  -- together, so the entries after that position are exactly the steps the pages may
  -- or may not show (the replica's ver floors sort them out). HSETNX is a write on
  -- purpose: a read-only replica or a Redis out of memory refuses it, so a system does
  -- not count as connected to a Redis that cannot apply its steps.
  -- A Redis that lost its data (restart, failover to an empty replica) gets a new
  -- incarnation: a system's replica then starts over instead of keeping what it had.
  redis.call('HSETNX', META, 'inc', args.inc)
  local top = redis.call('XREVRANGE', STREAM, '+', '-', 'COUNT', 1)
  local last = '0-0'
  if top[1] then last = top[1][1] end
  local ver = redis.call('HGET', META, 'ver') or '0'
  return {now, tonumber(ver), last, redis.call('HGET', META, 'inc')}
elseif op == 'page' then
  -- One page of the snapshot: a short script, so no call outlasts fleet_timeout
  -- whatever the number of circuits.
  local scan = redis.call('SSCAN', INDEX, args.cursor, 'COUNT', args.count)
  local out = {}
  for _, m in ipairs(scan[2]) do
    local raw = redis.call('HMGET', args.prefix .. m, 'status', 'meta', 'explicit', 'gen',
                           'ver')
    if raw[1] then
      out[#out + 1] = m; out[#out + 1] = raw[1]; out[#out + 1] = raw[2]
      out[#out + 1] = raw[3]; out[#out + 1] = raw[4]; out[#out + 1] = raw[5]
    end
  end
  return {scan[1], out}
else
  local fields = nil
  if op == 'configure' then
    fields = {'x', ARGV[6]}
    redis.call('HSET', CKEY, 'explicit', ARGV[6])
  end
  if op == 'success' or op == 'failure' then
    if args.token then redis.call('ZREM', PERMITS, args.token) end
    if opmeta ~= '' then fields = {'m', opmeta} end
  end
  if args.q ~= nil then
    -- The entry names the batch it folded in: its sender's replica counts it once.
    fields = fields or {}
    fields[#fields + 1] = 'q'
    fields[#fields + 1] = args.q.id
  end
  return step(CKEY, member, op, args, fields)
end
end
"""

#: The whole script: the head, the window (``_lua_window``), the rules and the ops, run
#: once per request id (``_lua_once``).
SCRIPT = _HEAD + WINDOW + _RULES + ONCE
