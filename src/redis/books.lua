-- The rate-limit books of one model, shared by every process that calls it:
-- the same rules as `src/rate_limit/books.rs`, run as one atomic step on
-- Redis's clock.
--
-- Calls are kept by granule, as the local books keep them: the calls whose
-- slots fall in one GRANULE share an entry, which leaves the window when
-- the granule's end does. A call counts up to a granule longer than it
-- need (never shorter), and a minute holds at most WINDOW / GRANULE
-- entries however fast calls come, so that no step walks more than that.
--
-- KEYS[1]: the log, a sorted set: member and score = a granule's end (ms
--          on Redis's clock).
-- KEYS[2]: what each granule's calls spent, a hash: the granule's end ->
--          packed {requests, tokens, input tokens, output tokens}.
-- KEYS[3]: the state, packed: the log's sums, the latest slot, the 429
--          pause, the provider's last reports.
-- ARGV[1]: the step, then its arguments (see each step below).
--
-- Every reply is an array of integers, its first the outcome:
--   0 booked: {0, wait_us, slot_us, reports, pauses, strikes}
--   1 zero budget: {1}
--   2 past the deadline: {2, wait_us}
--   3 may go (recheck): {3}
--   4 done (the writes): {4}

local log, spent, st = KEYS[1], KEYS[2], KEYS[3]
local WINDOW = 60000
local MAX_WAIT = 86400000
local GRANULE = 100
local LIMITS = 4

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000

-- The state, read once: one key, packed with MessagePack (no number
-- written out as text): the latest slot, the pause's end, the pauses and
-- 429s in a row counted, the reports taken in, the log's four sums, per
-- limit its report (false: none) as
-- {reset_at, left, capacity (-1: none), level, at, rate}, then when the
-- log was last swept and until when the keys are kept.
local S = {}
do
  local raw = redis.call('GET', st)
  if raw then S = cmsgpack.unpack(raw) end
end
local last = S[1] or -1
local pause = S[2] or -1
local pauses = S[3] or 0
local strikes = S[4] or 0
local reports = S[5] or 0
local sums = {S[6] or 0, S[7] or 0, S[8] or 0, S[9] or 0}
local reported = {}
for i = 1, LIMITS do
  if S[9 + i] then reported[i] = S[9 + i] end
end
local swept = S[14] or 0
local kept = S[15] or 0

-- The end of the granule of time t: the entry a call at t goes in.
local function granule(t)
  return (math.floor(t / GRANULE) + 1) * GRANULE
end

-- HMGET of many fields, in slices (Lua's unpack has a limit).
local function amounts_of(ids)
  local out = {}
  for from = 1, #ids, 1000 do
    local part = redis.call('HMGET', spent, unpack(ids, from, math.min(from + 999, #ids)))
    for _, packed in ipairs(part) do out[#out + 1] = packed end
  end
  return out
end

local function wait_us(t)
  return math.floor((t - now) * 1000)
end

-- Granules out of the window leave the books, at most once a granule: a
-- call may count a little longer in the sums (the fast check), never
-- shorter; `room` walks the log itself.
local function expire()
  if pause >= 0 and pause <= now then pause = -1 end
  if now - swept < GRANULE then return end
  swept = now
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', now - WINDOW)
  if #old == 0 then return end
  for _, packed in ipairs(amounts_of(old)) do
    if packed then
      local a = cmsgpack.unpack(packed)
      for i = 1, LIMITS do sums[i] = sums[i] - a[i] end
    end
  end
  for from = 1, #old, 1000 do
    redis.call('HDEL', spent, unpack(old, from, math.min(from + 999, #old)))
  end
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - WINDOW)
  -- What nothing in the log accounts for any more (a log lost, evicted)
  -- must not hold the budget for ever.
  if redis.call('ZCARD', log) == 0 then sums = {0, 0, 0, 0} end
  for i = 1, LIMITS do sums[i] = math.max(0, sums[i]) end
end

-- The earliest time from t at which `need` fits a window of `budget` for
-- limit i. Granules are in order, none ending after t's granule.
local function room(i, t, need, budget)
  local sum = sums[i]
  if sum + need <= budget then return t end
  local checked = false
  local start = 0
  while true do
    local chunk = redis.call('ZRANGE', log, start, start + 127, 'WITHSCORES')
    if #chunk == 0 then
      -- Every granule is out at t: what is left of the sum is on no
      -- granule (lost, evicted), and is forgotten.
      sums[i] = sums[i] - sum
      return t
    end
    local ids = {}
    for j = 1, #chunk, 2 do ids[#ids + 1] = chunk[j] end
    local amounts = redis.call('HMGET', spent, unpack(ids))
    for j = 1, #ids do
      local a = amounts[j] and cmsgpack.unpack(amounts[j])
      local used = a and a[i] or 0
      local out = tonumber(chunk[j * 2]) + WINDOW
      if out > t then
        if not checked then
          checked = true
          if sum + need <= budget then return t end
        end
        sum = sum - used
        if sum + need <= budget then return out end
      else
        sum = sum - used
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

local new_granule = false

-- Adds `a` (which may be negative) to the granule ending at `g`, and to the
-- sums. With `create` false, only to a granule still on the books; whether
-- it was.
local function add(g, a, create)
  local packed = redis.call('HGET', spent, g)
  if not packed and not create then return false end
  local b = packed and cmsgpack.unpack(packed) or {0, 0, 0, 0}
  for i = 1, LIMITS do
    b[i] = math.max(0, b[i] + a[i])
    sums[i] = math.max(0, sums[i] + a[i])
  end
  redis.call('HSET', spent, g, cmsgpack.pack(b))
  if not packed then
    redis.call('ZADD', log, g, g)
    new_granule = true
  end
  return true
end

-- Writes the state back. Every key expires once nothing in it matters any
-- more, all three at the same time (the state never outlives the log);
-- their expiry moves on by whole seconds, not at every step.
local function save()
  local keep = math.max(last, pause, now)
  for i = 1, LIMITS do
    local r = reported[i]
    if r then keep = math.max(keep, r[1]) end
  end
  local until_ = keep + WINDOW + GRANULE + 1000
  -- A new granule may have made the keys anew (without an expiry).
  if until_ > kept or new_granule then
    kept = until_ + 1000
    redis.call('PEXPIRE', log, math.ceil(kept - now))
    redis.call('PEXPIRE', spent, math.ceil(kept - now))
  end
  local packed = cmsgpack.pack({last, pause, pauses, strikes, reports,
    sums[1], sums[2], sums[3], sums[4],
    reported[1] or false, reported[2] or false, reported[3] or false, reported[4] or false,
    swept, kept})
  redis.call('SET', st, packed, 'PX', math.max(1, math.ceil(kept - now)))
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
  add(granule(t), need, true)
  for i = 1, LIMITS do
    local r = reported[i]
    if r then charge(r, t, need[i]) end
  end
  last = t
  return {0, wait_us(t), math.floor(t * 1000), reports, pauses, strikes}
end

-- Gives back a booking of `need` at `slot`, made when `at_reports` reports
-- had been taken in.
local function cancel(need, slot, at_reports)
  local back = {}
  for i = 1, LIMITS do back[i] = -need[i] end
  add(granule(slot), back, false)
  if at_reports == reports then
    for i = 1, LIMITS do
      local r = reported[i]
      if r then refund(r, slot, need[i]) end
    end
  end
end

-- Replaces what is on the books for a call booked at `slot` with what it
-- used, in its granule while that is in the window.
local function correct(slot, on_books, used)
  local d = {}
  local any = false
  for i = 1, LIMITS do
    d[i] = used[i] - on_books[i]
    if d[i] ~= 0 then any = true end
  end
  if not any then return end
  if granule(slot) + WINDOW > now and add(granule(slot), d, false) then
    return
  end
  expire()
  -- The call outlived the window: what it used beyond the estimate is
  -- charged now, behind the queue.
  local excess = {0, 0, 0, 0}
  local any = false
  for i = 2, LIMITS do
    excess[i] = math.max(0, d[i])
    if excess[i] > 0 then any = true end
  end
  if any then
    local at = math.max(last, now)
    add(granule(at), excess, true)
    last = at
  end
end

-- Takes in what an answer reported `age` ms ago: per limit, its limit
-- (-1: none), remaining (-1: none) and reset in ms. Calls booked after it
-- are not in the report: they are taken off it (by granule: a few more,
-- never fewer).
local function absorb(age, q)
  local at = now - math.max(0, age)
  local ahead = {0, 0, 0, 0}
  if last > at then
    local ids = redis.call('ZRANGEBYSCORE', log, '(' .. string.format('%.17g', at), '+inf')
    for _, packed in ipairs(amounts_of(ids)) do
      if packed then
        local a = cmsgpack.unpack(packed)
        for i = 1, LIMITS do ahead[i] = ahead[i] + a[i] end
      end
    end
  end
  local any = false
  for i = 1, LIMITS do
    local limit, remaining = q[i * 3 - 2], q[i * 3 - 1]
    local reset = math.min(q[i * 3], MAX_WAIT)
    if remaining >= 0 then
      local r = {at + reset, math.max(0, remaining - ahead[i]), -1, 0, at, 0}
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
  --   cancels: n, then n x {need x4, slot us, reports}
  --   corrections: n, then n x {slot us, on the books x4, used x4}
  --   answered: flags: 1 an answer came (429s no longer in a row), 2 a
  --     report follows: its age in ms and 12 numbers (see absorb)
  --   booking: 0, or 1 and {budget x4 (-1: none), need x4, deadline ms
  --     (-1: none)}
  for _ = 1, take(1)[1] do
    local c = take(6)
    cancel({c[1], c[2], c[3], c[4]}, c[5] / 1000, c[6])
  end
  for _ = 1, take(1)[1] do
    local c = take(9)
    correct(c[1] / 1000, {c[2], c[3], c[4], c[5]}, {c[6], c[7], c[8], c[9]})
  end
  local flags = take(1)[1]
  if flags % 2 == 1 then strikes = 0 end
  if flags >= 2 then
    local age = take(1)[1]
    absorb(age, take(12))
  end
  local reply = {4}
  if take(1)[1] == 1 then
    local b = take(9)
    reply = book({b[1], b[2], b[3], b[4]}, {b[5], b[6], b[7], b[8]}, b[9])
  end
  save()
  return reply
elseif op == 'recheck' then
  -- need x4, slot us, reports, pauses, budget x4, deadline
  local c = take(7)
  local need, slot = {c[1], c[2], c[3], c[4]}, c[5] / 1000
  local at_reports, at_pauses = c[6], c[7]
  local paused = at_pauses ~= pauses and pause > slot and pause > now
  if not paused then return {3} end
  cancel(need, slot, at_reports)
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
