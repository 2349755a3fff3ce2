-- asyncimg's shared rate limiter: a FIFO sliding window counted in images.
--
-- One script, one operation per call (ARGV[1]: acquire, take, settle, stats);
-- every operation first tidies
-- the state (expired sends, lapsed leases) by Redis's own clock, so the clocks
-- of the hosts never matter. All times are milliseconds.
--
-- KEYS (one hash tag, so one cluster slot):
--   1 st    hash: counters, the pause, the server's allowance
--   2 win   zset: ticket -> when its images leave the window (sent, or lapsed)
--   3 held  zset: ticket -> lease deadline (granted, not yet sent nor refunded)
--   4 q     zset: ticket -> arrival number (the FIFO queue of waiters)
--   5 ql    zset: ticket -> lease deadline of a waiter
--   6 ep    hash: ticket -> the allowance epoch it was granted under
--   7 sub   zset: ticket -> when its images leave the burst window
-- ARGV: 1 op, 2 caller session, 3 limit (images), 4 window (per + margin),
--       5 per, 6 lease, 7 burst (0: none), 8 the burst window, 9 wake channel,
--       10 now ('' = TIME; tests pass a fake time), 11... the operation's
--       arguments.
-- A ticket is "<session>:<sequence>:<images>".
--
-- Reply: {granted tickets, wait, mine, lost, state}; wait is how long the queue's
-- head must wait (-1: until something happens, which publishes), mine is 1
-- when the head belongs to the caller and fits, lost is 1 when this call found
-- the state lost (and paused everyone for a window), state is the shared snapshot.

if redis.replicate_commands then
  redis.replicate_commands()
end

local st, win, held, q, ql, ep, sub = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6],
  KEYS[7]
local op, sid = ARGV[1], ARGV[2]
local limit, window, per, lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6])
local burst, subspan = tonumber(ARGV[7]), tonumber(ARGV[8])
local channel = ARGV[9]
local now
if ARGV[10] ~= '' then
  now = tonumber(ARGV[10])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local FIELDS = {'used', 'held', 'qimg', 'seq', 'granted', 'refunded', 'sent', 'pauses',
  'pause_until', 'epoch', 'sub_used', 'lost', 'allow', 'allow_until', 'allow_img', 'slimit'}
local S = {}
local raw = redis.call('HMGET', st, unpack(FIELDS))
for i, f in ipairs(FIELDS) do
  S[f] = tonumber(raw[i])
end
for i = 1, 12 do
  S[FIELDS[i]] = S[FIELDS[i]] or 0
end

-- Refuse a bad call before anything is written (Redis does not roll a script back).
if op ~= 'acquire' and op ~= 'take' and op ~= 'settle' and op ~= 'stats' then
  return redis.error_reply('asyncimg limiter: unknown operation ' .. op)
end
if op == 'settle' then
  for i = 11, #ARGV do
    local item = ARGV[i]
    local kind = string.sub(item, 1, 2)
    if not (kind == 's:' or kind == 'r:' or kind == 'l:' or kind == 'p:' or kind == 'o:')
        or (kind == 'o:' and not string.match(item, '^o:%-?%d+:%-?%d+:%d:%-?%d+$'))
        or (kind == 'l:' and not string.match(item, '^l:%d+:.+$'))
        or (kind == 'p:' and not tonumber(string.sub(item, 3))) then
      return redis.error_reply('asyncimg limiter: unknown settlement ' .. item)
    end
  end
end

-- The budget's rate is stored with it: every process naming it must give the same.
local rate = ARGV[3] .. ' images per ' .. ARGV[5] .. ' ms (window ' .. ARGV[4] .. ' ms, burst '
  .. ARGV[7] .. ')'
local stored = redis.call('HGET', st, 'rate')
if stored and stored ~= rate then
  return redis.error_reply('asyncimg limiter: ' .. st .. ' is a budget of ' .. stored
    .. ', and this process gives ' .. rate .. ': every process sharing a name must give '
    .. 'the same rate')
end

-- Lost state: Redis evicted some of these keys (a maxmemory policy that evicts) or lost
-- them all (a restart). The counters and the sets must agree, and a caller that stamps
-- or renews a permit proves the budget is not new. Whatever was sent in the window
-- before is unknown: start afresh, everyone paused for one window.
local function missing(key)
  return redis.call('EXISTS', key) == 0
end
local claims = false
if op == 'take' then
  claims = tonumber(ARGV[11]) > 0
elseif op == 'settle' then
  for i = 11, #ARGV do
    if string.sub(ARGV[i], 1, 2) == 's:' then claims = true end
  end
end
local lost
if raw[4] == false then  -- no hash: a new budget, unless something says otherwise
  lost = claims or redis.call('EXISTS', win, held, q, sub) > 0
else
  lost = (S.held > 0 and missing(held)) or (S.used > S.held and missing(win))
    or (S.qimg > 0 and missing(q))
end
if lost then
  redis.call('DEL', win, held, q, ql, ep, sub)
  S.used, S.held, S.qimg, S.sub_used, S.allow = 0, 0, 0, 0, nil
  S.lost = S.lost + 1
  S.pauses = S.pauses + 1
  S.pause_until = math.max(S.pause_until, now + window)
end

local function count(m)
  return tonumber(string.match(m, ':(%d+)$'))
end

local function owner(m)
  return string.match(m, '^([^:]+):')
end

local function cost(n)
  if S.allow_img == 1 then return n end
  return 1
end

local function head()
  return redis.call('ZRANGE', q, 0, 0)[1]
end

local freed = false
local head0 = head()

-- The tidy-up: sends that left the window, leases that lapsed.
local gone = redis.call('ZRANGEBYSCORE', win, '-inf', now)
if #gone > 0 then
  for _, m in ipairs(gone) do
    local n = count(m)
    S.used = S.used - n
    if S.allow then S.allow = S.allow + cost(n) end
  end
  redis.call('ZREMRANGEBYSCORE', win, '-inf', now)
  freed = true
end
if burst > 0 then
  local out = redis.call('ZRANGEBYSCORE', sub, '-inf', now)
  for _, m in ipairs(out) do
    S.sub_used = S.sub_used - count(m)
  end
  if #out > 0 then
    redis.call('ZREMRANGEBYSCORE', sub, '-inf', now)
    freed = true
  end
end
-- A holder that stopped renewing its lease is gone; what it held may have been
-- sent, so it counts as sent when the lease lapsed.
local function linger(key, span, field, m, n, at)  -- sent at `at`: in key until at + span
  if at + span > now then
    redis.call('ZADD', key, at + span, m)
  else
    S[field] = S[field] - n
    freed = true
  end
end
local lapsed = redis.call('ZRANGEBYSCORE', held, '-inf', now, 'WITHSCORES')
for i = 1, #lapsed, 2 do
  local m, at = lapsed[i], tonumber(lapsed[i + 1])
  local n = count(m)
  S.held = S.held - n
  S.sent = S.sent + n
  redis.call('HDEL', ep, m)
  linger(win, window, 'used', m, n, at)
  if burst > 0 then linger(sub, subspan, 'sub_used', m, n, at) end
end
if #lapsed > 0 then
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
end
local dead = redis.call('ZRANGEBYSCORE', ql, '-inf', now)
for _, m in ipairs(dead) do
  if redis.call('ZREM', q, m) == 1 then
    S.qimg = S.qimg - count(m)
  end
end
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', ql, '-inf', now)
end
if S.allow and now >= S.allow_until then
  S.allow = nil
  freed = true
end

local function fits(n)
  if now < S.pause_until then return false end
  if S.used + n > limit then return false end
  -- The burst window; a request larger than the burst goes alone in it.
  if burst > 0 and S.sub_used > 0 and S.sub_used + n > burst then return false end
  return S.allow == nil or cost(n) <= S.allow
end

local function grant(m)
  local n = count(m)
  S.used = S.used + n
  S.held = S.held + n
  S.granted = S.granted + n
  if burst > 0 then S.sub_used = S.sub_used + n end
  if S.allow then S.allow = S.allow - cost(n) end
  redis.call('ZADD', held, now + lease, m)
  redis.call('HSET', ep, m, S.epoch)
end

local function enqueue(m)
  S.seq = S.seq + 1
  redis.call('ZADD', q, S.seq, m)
  redis.call('ZADD', ql, now + lease, m)
  S.qimg = S.qimg + count(m)
end

local function unqueue(m)
  redis.call('ZREM', q, m)
  redis.call('ZREM', ql, m)
  S.qimg = S.qimg - count(m)
end

-- Give back what ticket m holds (not sent); true if it held anything.
local function release(m)
  local n = count(m)
  if redis.call('ZREM', held, m) == 1 then
    S.used = S.used - n
    S.held = S.held - n
    S.refunded = S.refunded + n
    if burst > 0 then S.sub_used = S.sub_used - n end
    if S.allow and tonumber(redis.call('HGET', ep, m)) == S.epoch then
      S.allow = S.allow + cost(n)
    end
    redis.call('HDEL', ep, m)
    return true
  end
  if redis.call('ZREM', win, m) == 1 then  -- its lease lapsed, but it was never sent
    S.used = S.used - n
    S.sent = S.sent - n
    S.refunded = S.refunded + n
    if burst > 0 and redis.call('ZREM', sub, m) == 1 then S.sub_used = S.sub_used - n end
    return true
  end
  return false
end

-- Serve the caller's tickets at the head of the queue while they fit.
local function serve(out)
  while true do
    local m = head()
    if m == nil or owner(m) ~= sid or not fits(count(m)) then return end
    unqueue(m)
    grant(m)
    out[#out + 1] = m
  end
end

local function stamp(m)
  local n = count(m)
  local was_held = redis.call('ZREM', held, m) == 1
  if burst > 0 and redis.call('ZADD', sub, now + subspan, m) == 1 and not was_held then
    S.sub_used = S.sub_used + n  -- counted again, as in the window below
  end
  if was_held then
    S.held = S.held - n
    redis.call('HDEL', ep, m)
  elseif redis.call('ZSCORE', win, m) == false then
    S.used = S.used + n  -- Redis lost it (restarted): count it again
  else
    S.sent = S.sent - n  -- its lapse counted it already
  end
  S.sent = S.sent + n
  redis.call('ZADD', win, now + window, m)
  freed = true  -- the head now has an expiry to wait for
end

-- Sent `ago` ms ago while Redis was out of reach (the local fallback): it counts in
-- the windows for what is left of them.
local function sent_before(m, ago)
  local n = count(m)
  if window - ago > 0 then
    redis.call('ZADD', win, now - ago + window, m)
    S.used = S.used + n
    S.sent = S.sent + n
  end
  if burst > 0 and subspan - ago > 0 then
    redis.call('ZADD', sub, now - ago + subspan, m)
    S.sub_used = S.sub_used + n
  end
end

local function pause(ms)
  local until_ = now + ms
  if until_ > S.pause_until then
    if now >= S.pause_until then S.pauses = S.pauses + 1 end
    S.pause_until = until_
  end
end

-- The server's word: at most `remaining` more until `reset` ms from now.
local function observe(remaining, reset, images, server_limit)
  S.epoch = S.epoch + 1
  if reset <= 0 then
    S.allow = nil
  else
    S.allow = math.max(0, remaining)
    S.allow_until = now + reset
    S.allow_img = images
  end
  if server_limit >= 0 then S.slimit = server_limit end
  freed = true
end

local granted = {}
local last = -1

if op == 'acquire' then
  -- ARGV[11...]: new tickets in the caller's order; granted while nobody waits and
  -- they fit, queued from the first that does not.
  for i = 11, #ARGV do
    local m = ARGV[i]
    if redis.call('ZCARD', q) == 0 and fits(count(m)) then
      grant(m)
      granted[#granted + 1] = m
    else
      enqueue(m)
    end
  end
elseif op == 'take' then
  -- ARGV[11] = how many held tickets follow; then the caller's waiting tickets
  -- in its own order. Both leases are renewed; a waiting ticket the queue lost
  -- (Redis restarted, or its lease lapsed) joins at the back again.
  local nheld = tonumber(ARGV[11])
  for i = 12, 11 + nheld do
    redis.call('ZADD', held, 'XX', now + lease, ARGV[i])
  end
  for i = 12 + nheld, #ARGV do
    local m = ARGV[i]
    if redis.call('ZSCORE', q, m) then
      redis.call('ZADD', ql, now + lease, m)
    elseif redis.call('ZSCORE', held, m) or redis.call('ZSCORE', win, m) then
      granted[#granted + 1] = m  -- granted, but the reply was lost
    else
      enqueue(m)
    end
  end
  serve(granted)
elseif op == 'settle' then
  -- ARGV[11...], in order: "s:<ticket>" sent now, "r:<ticket>" give back (or leave
  -- the queue), "l:<ms ago>:<ticket>" sent that long ago by a process that could not
  -- reach Redis, "p:<ms>" pause everyone, "o:<remaining>:<reset ms>:<1 images|0
  -- requests>:<limit, -1 none>" the server's headers.
  for i = 11, #ARGV do
    local kind, rest = string.sub(ARGV[i], 1, 1), string.sub(ARGV[i], 3)
    if kind == 's' then
      stamp(rest)
    elseif kind == 'r' then
      if redis.call('ZSCORE', q, rest) then
        unqueue(rest)
      elseif release(rest) then
        freed = true
      end
    elseif kind == 'l' then
      local ago, m = string.match(rest, '^(%d+):(.+)$')
      sent_before(m, tonumber(ago))
    elseif kind == 'p' then
      pause(tonumber(rest))
    elseif kind == 'o' then
      local a, b, c, d = string.match(rest, '^(%-?%d+):(%-?%d+):(%d):(%-?%d+)$')
      observe(tonumber(a), tonumber(b), tonumber(c), tonumber(d))
    end
  end
end

if op == 'take' or op == 'stats' then
  -- The images stamped in the last `per`: their window ends after now + window - per.
  last = 0
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', win, '(' .. (now + window - per), '+inf')) do
    last = last + count(m)
  end
end

-- When may the head be served, and whom to tell (published after the save: Redis does
-- not roll a failed script back, so nothing that can fail comes before a write).
local h = head()
local wait, mine, tell = -1, 0, nil
if h then
  local n = count(h)
  if fits(n) then
    wait = 0
    if owner(h) == sid then
      mine = 1
    elseif freed or h ~= head0 then
      tell = owner(h)
    end
  else
    local when = nil
    local function sooner(t)
      if t and (when == nil or t < when) then when = t end
    end
    local function first(key)  -- the earliest expiry in a zset, or nil
      local f = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if f[2] then return tonumber(f[2]) end
      return nil
    end
    if now < S.pause_until then
      when = S.pause_until
    else
      if S.used + n > limit then sooner(first(win)) end
      if burst > 0 and S.sub_used > 0 and S.sub_used + n > burst then sooner(first(sub)) end
      if S.allow and cost(n) > S.allow then
        sooner(S.allow_until)
        sooner(first(win))  -- an expiry gives back to the allowance too
      end
    end
    if when then wait = when - now end
    if owner(h) == sid then
      mine = 2
    elseif freed or h ~= head0 then
      tell = owner(h)  -- a new head, or news for it
    end
  end
end

-- Save, and let every key expire once everything in it has.
local keep = window + lease + 10000
if S.pause_until - now + lease > keep then keep = S.pause_until - now + lease end
if S.allow and S.allow_until - now + lease > keep then keep = S.allow_until - now + lease end
local save = {}
for _, f in ipairs(FIELDS) do
  if S[f] ~= nil then
    save[#save + 1] = f
    save[#save + 1] = S[f]
  end
end
save[#save + 1] = 'rate'
save[#save + 1] = rate
redis.call('HSET', st, unpack(save))
if S.allow == nil then
  redis.call('HDEL', st, 'allow')
end
for i = 1, 7 do
  redis.call('PEXPIRE', KEYS[i], math.ceil(keep))
end

if tell then
  local told = redis.pcall('PUBLISH', channel, tell)
  if type(told) == 'table' and told.err then
    return redis.error_reply('asyncimg limiter: PUBLISH refused (' .. told.err .. '); the '
      .. 'state is saved, but the other processes cannot be woken: the Redis user needs '
      .. 'the channel (ACL rule &' .. channel .. ')')
  end
end

local allow, reset_in = -1, -1
if S.allow then
  allow = S.allow
  reset_in = S.allow_until - now
end
return {granted, math.floor(wait), mine, lost and 1 or 0, {
  S.granted, S.refunded, S.sent, redis.call('ZCARD', q), S.qimg, S.held, S.used - S.held,
  limit - S.used, S.pauses, math.max(0, S.pause_until - now), allow, math.floor(reset_in),
  S.slimit or -1, last}}
