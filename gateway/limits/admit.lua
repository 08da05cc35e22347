-- Admit one request against every bucket that applies to it, in one atomic step: all are charged or none.
-- Twin of MemoryLimiter.admit; the math is buckets.py's (token buckets refilled continuously at limit/60 per s).
--
-- KEYS[i]             bucket i: a hash {v = level, t = time of v} for a rate bucket (absent = full),
--                     a sorted set {lease id -> expiry time} for a concurrency bucket,
--                     an integer (tokens used in the period; absent = 0) for a budget
-- ARGV[1]             lease id ('' when no concurrency bucket applies)
-- ARGV[2]             lease TTL in seconds
-- ARGV[3i], ARGV[3i+1], ARGV[3i+2]
--                     bucket i: kind ('r' rate, 'c' concurrency, 'b:<unix expiry>' budget), limit (0 = no cap),
--                     cost. A budget never refills: its level is limit - used, and a new period is a new key.
-- returns             {admitted (1|0), level_1, next_free_1, ..., level_n, next_free_n}, floats as strings:
--                     the levels after charging when admitted, as found when rejected; next_free is the time until
--                     a concurrency bucket's earliest lease expires ('' when it has none or is a rate bucket)
--
-- Time is the server's (TIME), so replicas' clock skew never matters. Rejections write nothing except the purge
-- of expired leases, which is how a crashed replica's slots come back by themselves.

local function num(x) return string.format('%.17g', x) end

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = ARGV[1]
local ttl = tonumber(ARGV[2])
local window = 60

local kinds, limits, costs, levels, next_free = {}, {}, {}, {}, {}
local admitted = 1
for i = 1, #KEYS do
  local kind, limit, cost = ARGV[3 * i], tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
  kinds[i], limits[i], costs[i], next_free[i] = kind, limit, cost, ''
  if kind == 'r' then
    local state = redis.call('HMGET', KEYS[i], 'v', 't')
    local level = limit
    if state[1] then
      local elapsed = math.max(0, now - tonumber(state[2]))
      level = math.min(limit, tonumber(state[1]) + elapsed * limit / window)
    end
    levels[i] = level
    if level < cost then admitted = 0 end
  elseif string.sub(kind, 1, 1) == 'b' then
    local level = limit - tonumber(redis.call('GET', KEYS[i]) or '0')
    levels[i] = level
    if level < cost then admitted = 0 end
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', num(now))
    local in_use = redis.call('ZCARD', KEYS[i])
    levels[i] = in_use
    if limit > 0 and in_use + 1 > limit then
      admitted = 0
      local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
      if first[2] then next_free[i] = num(tonumber(first[2]) - now) end
    end
  end
end

if admitted == 1 then
  for i = 1, #KEYS do
    if kinds[i] == 'r' then
      local level = levels[i] - costs[i]
      levels[i] = level
      redis.call('HSET', KEYS[i], 'v', num(level), 't', num(now))
      -- Once full, the bucket is indistinguishable from an absent key: let it go.
      redis.call('PEXPIRE', KEYS[i], math.ceil((limits[i] - level) * window / limits[i] * 1000) + 1000)
    elseif string.sub(kinds[i], 1, 1) == 'b' then
      redis.call('INCRBY', KEYS[i], costs[i])
      redis.call('EXPIREAT', KEYS[i], tonumber(string.sub(kinds[i], 3)))
      levels[i] = levels[i] - costs[i]
    else
      redis.call('ZADD', KEYS[i], num(now + ttl), lease)
      redis.call('PEXPIRE', KEYS[i], math.ceil(ttl * 1000) + 1000)
      levels[i] = levels[i] + 1
    end
  end
end

local out = {admitted}
for i = 1, #KEYS do
  out[2 * i] = num(levels[i])
  out[2 * i + 1] = next_free[i]
end
return out
