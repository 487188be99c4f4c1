-- The rate-limit books of one model, shared by every process that calls it:
-- the same rules as `src/rate_limit/books.rs`, run as one atomic step on
-- Redis's clock.
--
-- KEYS[1]: the log, a sorted set of booked calls: score = the call's slot
--          (ms on Redis's clock), member = "seq:requests:tokens:input:output".
-- KEYS[2]: the state, a hash: the log's sums, the next entry number, the
--          latest slot, the 429 pause, and the provider's last report.
-- ARGV[1]: the step, then its arguments (see each step below).
--
-- Every reply is an array of integers, its first the outcome:
--   0 booked: {0, wait_us, seq, slot_ms, reports, pauses, strikes}
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

-- The state, read once.
local state = {}
do
  local flat = redis.call('HGETALL', st)
  for i = 1, #flat, 2 do state[flat[i]] = flat[i + 1] end
end
local sums = {}
for i = 1, LIMITS do sums[i] = tonumber(state['s' .. i] or '0') end
local seq_next = tonumber(state.seq or '0')
local last = tonumber(state.last or '-1')
local pause = tonumber(state.pause or '-1')
local pauses = tonumber(state.pauses or '0')
local strikes = tonumber(state.strikes or '0')
local reports = tonumber(state.reports or '0')

-- A report, per limit: {reset_at, left, capacity (-1: none), level, at, rate}.
local reported = {}
for i = 1, LIMITS do
  local q = state['q' .. i]
  if q then
    local r = {}
    for x in string.gmatch(q, '[^,]+') do r[#r + 1] = tonumber(x) end
    reported[i] = r
  end
end

local function member(seq, a)
  return string.format('%d:%d:%d:%d:%d', seq, a[1], a[2], a[3], a[4])
end

local function amounts(m)
  local a = {}
  local k = 0
  for x in string.gmatch(m, '%d+') do
    if k > 0 then a[k] = tonumber(x) end
    k = k + 1
  end
  return a
end

local function nums(from, count)
  local a = {}
  for i = 1, count do a[i] = tonumber(ARGV[from + i - 1]) end
  return a
end

local function wait_us(t)
  return math.floor((t - now) * 1000)
end

-- Entries out of the window leave the books.
local function expire()
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', now - WINDOW)
  if #old > 0 then
    for _, m in ipairs(old) do
      local a = amounts(m)
      for i = 1, LIMITS do sums[i] = math.max(0, sums[i] - a[i]) end
    end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', now - WINDOW)
  end
  if pause >= 0 and pause <= now then pause = -1 end
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
  local fields = {
    'seq', seq_next, 'last', string.format('%.17g', last),
    'pause', string.format('%.17g', pause), 'pauses', pauses,
    'strikes', strikes, 'reports', reports,
  }
  local keep = math.max(last, pause, now)
  for i = 1, LIMITS do
    fields[#fields + 1] = 's' .. i
    fields[#fields + 1] = sums[i]
    local r = reported[i]
    if r then
      keep = math.max(keep, r[1])
      fields[#fields + 1] = 'q' .. i
      fields[#fields + 1] = string.format('%.17g,%.17g,%.17g,%.17g,%.17g,%.17g',
        r[1], r[2], r[3], r[4], r[5], r[6])
    end
  end
  redis.call('HSET', st, unpack(fields))
  local ttl = math.ceil(keep - now) + WINDOW + 1000
  redis.call('PEXPIRE', st, ttl)
  redis.call('PEXPIRE', log, ttl)
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
  save()
  return {0, wait_us(t), seq, math.floor(t), reports, pauses, strikes}
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

local op = ARGV[1]

if op == 'book' then
  -- budget x4, need x4, deadline
  return book(nums(2, 4), nums(6, 4), tonumber(ARGV[10]))
elseif op == 'recheck' then
  -- seq, need x4, slot, reports, pauses, budget x4, deadline
  local seq, need = tonumber(ARGV[2]), nums(3, 4)
  local slot, at_reports, at_pauses = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
  local paused = at_pauses ~= pauses and pause > slot and pause > now
  if not paused then return {3} end
  cancel(seq, need, slot, at_reports)
  return book(nums(10, 4), need, tonumber(ARGV[14]))
elseif op == 'cancel' then
  -- seq, need x4, slot, reports
  cancel(tonumber(ARGV[2]), nums(3, 4), tonumber(ARGV[7]), tonumber(ARGV[8]))
  save()
  return {4}
elseif op == 'correct' then
  -- seq (-1: none), on the books x4, used x4
  local seq, on_books, used = tonumber(ARGV[2]), nums(3, 4), nums(7, 4)
  if seq >= 0 then
    local old = member(seq, on_books)
    local at = redis.call('ZSCORE', log, old)
    if at and tonumber(at) + WINDOW > now then
      redis.call('ZREM', log, old)
      redis.call('ZADD', log, at, member(seq, used))
      for i = 1, LIMITS do sums[i] = math.max(0, sums[i] - on_books[i] + used[i]) end
      save()
      return {4, 0}
    end
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
  save()
  return {4, 1}
elseif op == 'absorb' then
  -- An answer: 429s are no longer in a row, and what it reported.
  -- Per limit: limit (-1: none), remaining (-1: none), reset ms.
  strikes = 0
  local ahead = {0, 0, 0, 0}
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', log, '(' .. now, '+inf')) do
    local a = amounts(m)
    for i = 1, LIMITS do ahead[i] = ahead[i] + a[i] end
  end
  local any = false
  for i = 1, LIMITS do
    local limit = tonumber(ARGV[2 + (i - 1) * 3])
    local remaining = tonumber(ARGV[3 + (i - 1) * 3])
    local reset = math.min(tonumber(ARGV[4 + (i - 1) * 3]), MAX_WAIT)
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
  save()
  return {4}
elseif op == 'pause' then
  -- retry_after ms (-1: none)
  local retry = tonumber(ARGV[2])
  strikes = strikes + 1
  local wait = retry
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
elseif op == 'ok' then
  if strikes ~= 0 then
    strikes = 0
    save()
  end
  return {4}
end
return redis.error_reply('llm-tower books: unknown step ' .. tostring(op))
