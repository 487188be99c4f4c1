-- The rate-limit books of one model, shared by every process that calls it:
-- the same rules as `src/rate_limit/books.rs`, run as one atomic step on
-- Redis's clock.
--
-- KEYS[1]: the log, a sorted set of booked calls: score = the call's slot
--          (ms on Redis's clock), member = "seq:requests:tokens:input:output".
-- KEYS[2]: the state, packed: the log's sums, the next entry number, the
--          latest slot, the 429 pause, and the provider's last report.
--          Corrections are entries of their own, at their call's slot:
--          "c" then the same fields, the amounts the difference (negative
--          when a call used less than booked).
-- ARGV[1]: the step, then its arguments (see each step below).
--
-- Every reply is an array of integers, its first the outcome:
--   0 booked: {0, wait_us, seq, slot_us, reports, pauses, strikes}
--   1 zero budget: {1}
--   2 past the deadline: {2, wait_us}
--   3 may go (recheck): {3}
--   4 done (the writes): {4}

local log, st = KEYS[1], KEYS[2]
local WINDOW = 60000
local MAX_WAIT = 86400000
local LIMITS = 4

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000

-- The state, read once: one key, packed with MessagePack (no number
-- written out as text): the next entry number, the latest slot, the
-- pause's end, the pauses and 429s in a row counted, the reports taken in,
-- the log's four sums, per limit its report (false: none) as
-- {reset_at, left, capacity (-1: none), level, at, rate}, then when the
-- log was last swept and until when it is kept.
local S = {}
do
  local raw = redis.call('GET', st)
  if raw then S = cmsgpack.unpack(raw) end
end
local seq_next = S[1] or 0
local last = S[2] or -1
local pause = S[3] or -1
local pauses = S[4] or 0
local strikes = S[5] or 0
local reports = S[6] or 0
local sums = {S[7] or 0, S[8] or 0, S[9] or 0, S[10] or 0}
local reported = {}
for i = 1, LIMITS do
  if S[10 + i] then reported[i] = S[10 + i] end
end
local swept = S[15] or 0
local kept = S[16] or 0

local function member(seq, a)
  return string.format('%d:%d:%d:%d:%d', seq, a[1], a[2], a[3], a[4])
end

local function amounts(m)
  local a, b, c, d = string.match(m, ':(-?%d+):(-?%d+):(-?%d+):(-?%d+)$')
  return {tonumber(a), tonumber(b), tonumber(c), tonumber(d)}
end

local function wait_us(t)
  return math.floor((t - now) * 1000)
end

-- Entries out of the window leave the books, at most every SWEEP ms: a
-- call may count up to that much longer than its minute in the sums (the
-- fast check), never shorter. `room` walks the log itself.
local SWEEP = 100
local function expire()
  if pause >= 0 and pause <= now then pause = -1 end
  if now - swept < SWEEP then return end
  swept = now
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', now - WINDOW)
  if #old > 0 then
    for _, m in ipairs(old) do
      local a = amounts(m)
      for i = 1, LIMITS do sums[i] = math.max(0, sums[i] - a[i]) end
    end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - WINDOW)
  end
end

-- The earliest time from t at which `need` fits a window of `budget` for
-- limit i. Entries are in slot order, all at or before t.
local function room(i, t, need, budget)
  local sum = sums[i]
  if sum + need <= budget then return t end
  local checked = false
  local start = 0
  while true do
    local chunk = redis.call('ZRANGE', log, start, start + 127, 'WITHSCORES')
    if #chunk == 0 then return t end
    for j = 1, #chunk, 2 do
      local spent = amounts(chunk[j])[i]
      local out = tonumber(chunk[j + 1]) + WINDOW
      if out > t then
        if not checked then
          checked = true
          if sum + need <= budget then return t end
        end
        sum = sum - spent
        if sum + need <= budget then return out end
      else
        sum = sum - spent
      end
    end
    start = start + 128
  end
end

local function level_at(r, t)
  return math.min(r[4] + r[6] * math.max(0, t - r[5]) / 1000, r[3])
end

-- The earliest time from t at which `need` fits the report r.
local function earliest(r, t, need)
  local at = t
  if at < r[1] and r[2] < need then at = r[1] end
  if r[3] >= 0 then
    local n = math.min(need, r[3])
    local level = level_at(r, at)
    if level < n then
      at = math.min(at + (n - level) / r[6] * 1000, now + MAX_WAIT)
    end
  end
  return at
end

local function charge(r, t, need)
  if t < r[1] then r[2] = math.max(0, r[2] - need) end
  if r[3] >= 0 then
    r[4] = level_at(r, t) - math.min(need, r[3])
    r[5] = math.max(r[5], t)
  end
end

local function refund(r, at, amount)
  if at < r[1] then r[2] = r[2] + amount end
  if r[3] >= 0 then r[4] = math.min(r[4] + math.min(amount, r[3]), r[3]) end
end

local function record(t, a)
  local seq = seq_next
  seq_next = seq_next + 1
  redis.call('ZADD', log, t, member(seq, a))
  for i = 1, LIMITS do sums[i] = sums[i] + a[i] end
  return seq
end

-- Writes the state back, and lets both keys expire once nothing in them
-- matters any more.
local function save()
  local keep = math.max(last, pause, now)
  for i = 1, LIMITS do
    local r = reported[i]
    if r then keep = math.max(keep, r[1]) end
  end
  local ttl = math.ceil(keep - now) + WINDOW + 1000
  -- The log's expiry moves on by whole seconds, not at every call.
  if now + ttl > kept then
    kept = now + ttl + 1000
    redis.call('PEXPIRE', log, ttl + 1000)
  end
  local packed = cmsgpack.pack({seq_next, last, pause, pauses, strikes, reports,
    sums[1], sums[2], sums[3], sums[4],
    reported[1] or false, reported[2] or false, reported[3] or false, reported[4] or false,
    swept, kept})
  redis.call('SET', st, packed, 'PX', ttl + 1000)
end

-- Books `need` under `budget` (-1: none), to start within `deadline` ms
-- (-1: none).
local function book(budget, need, deadline)
  expire()
  local t = math.max(now, last, pause)
  for i = 1, LIMITS do
    local b = budget[i]
    if b == 0 then return {1} end
    if b > 0 then t = math.max(t, room(i, t, math.min(need[i], b), b)) end
  end
  for i = 1, LIMITS do
    local r = reported[i]
    if r then t = math.max(t, earliest(r, t, need[i])) end
  end
  t = math.min(t, now + MAX_WAIT)
  if t > now and deadline >= 0 and t > now + deadline then
    return {2, wait_us(t)}
  end
  local seq = record(t, need)
  for i = 1, LIMITS do
    local r = reported[i]
    if r then charge(r, t, need[i]) end
  end
  last = t
  return {0, wait_us(t), seq, math.floor(t * 1000), reports, pauses, strikes}
end

-- Gives a booking back: {seq, need x4, slot, reports}.
local function cancel(seq, need, slot, at_reports)
  if redis.call('ZREM', log, member(seq, need)) == 1 then
    for i = 1, LIMITS do sums[i] = math.max(0, sums[i] - need[i]) end
  end
  if at_reports == reports then
    for i = 1, LIMITS do
      local r = reported[i]
      if r then refund(r, slot, need[i]) end
    end
  end
end

-- Replaces what is on the books for a call booked at `slot` with what it
-- used: an entry of the difference at the call's slot, which leaves the
-- window with it.
local function correct(seq, slot, on_books, used)
  if seq >= 0 and slot + WINDOW > now then
    local d = {}
    local any = false
    for i = 1, LIMITS do
      d[i] = used[i] - on_books[i]
      if d[i] ~= 0 then any = true end
    end
    if any then
      redis.call('ZADD', log, slot, 'c' .. member(seq, d))
      for i = 1, LIMITS do sums[i] = math.max(0, sums[i] + d[i]) end
    end
    return
  end
  expire()
  -- The call outlived the window: what it used beyond the estimate is
  -- charged now, behind the queue.
  local excess = {0, 0, 0, 0}
  local any = false
  for i = 2, LIMITS do
    excess[i] = math.max(0, used[i] - on_books[i])
    if excess[i] > 0 then any = true end
  end
  if any then
    local at = math.max(last, now)
    record(at, excess)
    last = at
  end
end

-- Takes in what an answer reported: per limit, its limit (-1: none),
-- remaining (-1: none) and reset in ms. Calls booked ahead of now are not
-- in the report yet: they are taken off it.
local function absorb(q)
  local ahead = {0, 0, 0, 0}
  if last > now then
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', log, '(' .. now, '+inf')) do
      local a = amounts(m)
      for i = 1, LIMITS do ahead[i] = ahead[i] + a[i] end
    end
  end
  local any = false
  for i = 1, LIMITS do
    local limit, remaining = q[i * 3 - 2], q[i * 3 - 1]
    local reset = math.min(q[i * 3], MAX_WAIT)
    if remaining >= 0 then
      local r = {now + reset, math.max(0, remaining - ahead[i]), -1, 0, now, 0}
      if limit > 0 then
        local rate
        if limit > remaining and reset > 0 then
          rate = (limit - remaining) / (reset / 1000)
        else
          rate = limit / (WINDOW / 1000)
        end
        r[3] = limit
        r[4] = math.min(remaining, limit) - ahead[i]
        r[6] = rate
      end
      reported[i] = r
      any = true
    end
  end
  if any then reports = reports + 1 end
end

-- The arguments, read in order.
local arg_at = 1
local function take(count)
  local a = {}
  for i = 1, count do a[i] = tonumber(ARGV[arg_at + i]) end
  arg_at = arg_at + count
  return a
end

local op = ARGV[1]

if op == 'steps' then
  -- What a process learnt since its last step, then maybe a booking:
  --   cancels: n, then n x {seq, need x4, slot us, reports}
  --   corrections: n, then n x {seq (-1: none), slot us, on the books x4,
  --     used x4}
  --   answered: 0, 1 (429s no longer in a row), or 2 (and a report, 12
  --     numbers: see absorb)
  --   booking: 0, or 1 and {budget x4 (-1: none), need x4, deadline ms
  --     (-1: none)}
  for _ = 1, take(1)[1] do
    local c = take(7)
    cancel(c[1], {c[2], c[3], c[4], c[5]}, c[6] / 1000, c[7])
  end
  for _ = 1, take(1)[1] do
    local c = take(10)
    correct(c[1], c[2] / 1000, {c[3], c[4], c[5], c[6]}, {c[7], c[8], c[9], c[10]})
  end
  local answered = take(1)[1]
  if answered > 0 then strikes = 0 end
  if answered == 2 then absorb(take(12)) end
  local reply = {4}
  if take(1)[1] == 1 then
    local b = take(9)
    reply = book({b[1], b[2], b[3], b[4]}, {b[5], b[6], b[7], b[8]}, b[9])
  end
  save()
  return reply
elseif op == 'recheck' then
  -- seq, need x4, slot us, reports, pauses, budget x4, deadline
  local c = take(8)
  local seq, need, slot = c[1], {c[2], c[3], c[4], c[5]}, c[6] / 1000
  local at_reports, at_pauses = c[7], c[8]
  local paused = at_pauses ~= pauses and pause > slot and pause > now
  if not paused then return {3} end
  cancel(seq, need, slot, at_reports)
  local b = take(5)
  local reply = book({b[1], b[2], b[3], b[4]}, need, b[5])
  save()
  return reply
elseif op == 'pause' then
  -- retry_after ms (-1: none)
  local wait = take(1)[1]
  strikes = strikes + 1
  if wait < 0 then
    wait = math.min(1000 * 2 ^ math.min(strikes - 1, 16), 32000)
  end
  local untl = now + math.min(wait, MAX_WAIT)
  if pause < untl then
    pause = untl
    pauses = pauses + 1
  end
  save()
  return {4}
end
return redis.error_reply('llm-tower books: unknown step ' .. tostring(op))
