"""The rate window in Lua (API.md section 12): the part of the fleet's script that keeps
a circuit's window in its status and checks the rate rules.

It mirrors ``brama_actors._window`` (``CountWindow``, ``TimeWindow``) and the rate
rules of ``brama_actors._rules``, and is checked against the same reference model
(``tests/test_fleet_model.py``). It is spliced into ``_lua.SCRIPT`` before the rules,
where ``now`` is already known.

The window lives in the circuit's status JSON (no key of its own), only while a rate
threshold applies; no field means an empty window:

* a count window: ``wo``, one character per outcome (``"0"`` a success, ``"1"`` failed,
  ``"2"`` slow, ``"3"`` both), oldest first, at most ``window_size`` of them; ``wf`` and
  ``ws`` count the failed and slow ones (so a step reads them without a scan).
* a time window: ``wb``, a flat list of buckets ``index, calls, failures, slow``
  (``index`` = ms // width, width = ceil(window_size / 20)), oldest first; an outcome
  counts while its bucket started less than ``window_size`` ms ago.
* ``we``, the window's epoch: bumped each time the window is cleared (every opening, a
  reset, a configure that changes its kind or size). A batch of quiet successes carries
  the epoch its system saw; a batch from another epoch adds to the totals, never to the
  window (those successes were made before it was cleared).

Thresholds travel as strings (``repr`` of the float): cjson writes numbers with 14
digits only, and a rule must compare with exactly the threshold the user gave. Rates
leave as integers (``_r = {failures, slow, calls}`` in ``circuit_opened``'s data) for
the same reason; the reader divides, as ``_rules`` does.

A batch (``args.q``): ``n`` successes, ``l`` the latest one's time, ``e`` the epoch,
``w`` how many of them go into a count window, ``b`` ``{index, count, ...}`` for a time
window, ``id`` the batch's name (the stream entry repeats it, see ``_pending``).
"""

from __future__ import annotations

__all__ = ["WINDOW"]

WINDOW = r"""
local function windowed(st)
  return st.failure_rate_threshold ~= nil or st.slow_call_rate_threshold ~= nil
end

-- Forget the window's outcomes; a new epoch if a rate rule still applies.
local function wclear(st)
  st.wo, st.wf, st.ws, st.wb = nil, nil, nil, nil
  if windowed(st) then st.we = (st.we or 0) + 1 end
end

local function wwidth(st)
  return math.ceil(st.window_size / 20)
end

-- (calls, failures, slow) in the window now; drops a time window's dead buckets.
local function wfigures(st)
  if st.window_type == 'time' then
    local wb = st.wb
    if wb == nil then return 0, 0, 0 end
    local width, cutoff = wwidth(st), now - st.window_size
    local live, c, f, s = {}, 0, 0, 0
    for i = 1, #wb, 4 do
      if wb[i] * width > cutoff then
        for j = 0, 3 do live[#live + 1] = wb[i + j] end
        c, f, s = c + wb[i + 1], f + wb[i + 2], s + wb[i + 3]
      end
    end
    if #live == 0 then live = nil end
    st.wb = live
    return c, f, s
  end
  if st.wo == nil then return 0, 0, 0 end
  return #st.wo, st.wf, st.ws
end

-- A count window: append outcome characters, evicting the oldest beyond window_size.
local function wpush(st, chars, f, s)
  local wo = (st.wo or '') .. chars
  f, s = (st.wf or 0) + f, (st.ws or 0) + s
  local over = #wo - st.window_size
  if over > 0 then
    local gone = wo:sub(1, over)
    f = f - select(2, gone:gsub('[13]', ''))
    s = s - select(2, gone:gsub('[23]', ''))
    wo = wo:sub(over + 1)
  end
  st.wo, st.wf, st.ws = wo, f, s
end

-- A time window: add to bucket idx (kept in order; an older bucket is inserted).
local function wbucket(st, idx, c, f, s)
  local wb, out, done = st.wb or {}, {}, false
  for i = 1, #wb, 4 do
    if not done and wb[i] == idx then
      out[#out + 1] = idx; out[#out + 1] = wb[i + 1] + c
      out[#out + 1] = wb[i + 2] + f; out[#out + 1] = wb[i + 3] + s
      done = true
    else
      if not done and wb[i] > idx then
        out[#out + 1] = idx; out[#out + 1] = c; out[#out + 1] = f; out[#out + 1] = s
        done = true
      end
      for j = 0, 3 do out[#out + 1] = wb[i + j] end
    end
  end
  if not done then
    out[#out + 1] = idx; out[#out + 1] = c; out[#out + 1] = f; out[#out + 1] = s
  end
  st.wb = out
end

-- Record one outcome now (closed, windowed): failed 0/1, slow from its duration.
local function wrecord(st, failed, duration)
  local slow = 0
  if duration ~= nil and st.slow_call_duration ~= nil
      and duration >= st.slow_call_duration then
    slow = 1
  end
  if st.window_type == 'time' then
    wfigures(st)
    wbucket(st, math.floor(now / wwidth(st)), 1, failed, slow)
  else
    wpush(st, tostring(failed + 2 * slow), failed, slow)
  end
end

-- Fold a system's batch of quiet successes in (before the step it came with).
local function wfold(st, q)
  st.total_successes = st.total_successes + q.n
  if st.last_success_time == nil or st.last_success_time < q.l then
    st.last_success_time = q.l
  end
  if st.state ~= 'closed' or not windowed(st) or (st.we or 0) ~= q.e then return end
  if st.window_type == 'time' then
    local b = q.b
    for i = 1, #b, 2 do wbucket(st, b[i], b[i + 1], 0, 0) end
    wfigures(st)
  elseif q.w > 0 then
    wpush(st, string.rep('0', math.min(q.w, st.window_size)), 0, 0)
  end
end

-- The rate rule the window trips now: reason, {failures, slow, calls}; or nil.
local function wtrip(st)
  local c, f, s = wfigures(st)
  if c == 0 or c < st.minimum_calls then return nil end
  local t = st.failure_rate_threshold
  if t ~= nil and f / c >= tonumber(t) then
    return 'Failure rate exceeded', {f, s, c}
  end
  t = st.slow_call_rate_threshold
  if t ~= nil and s / c >= tonumber(t) then
    return 'Slow call rate exceeded', {f, s, c}
  end
  return nil
end
"""
