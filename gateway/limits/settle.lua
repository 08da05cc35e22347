-- Settle one admitted request: refund the tokens it reserved but did not use, and release its concurrency slots.
-- Twin of MemoryLimiter.settle.
--
-- KEYS[1]             the tenant's lease registry (sorted set {lease id -> expiry time})
-- KEYS[i], i >= 2     the other buckets admission charged: rate buckets holding tokens, or concurrency buckets
-- ARGV[1]             lease id
-- ARGV[2]             tokens to refund: reserved - used; negative when the request used more than it reserved,
--                     which is charged, and may take the bucket below zero (later requests wait for the debt)
-- ARGV[2i-1], ARGV[2i] bucket i >= 2: kind ('r' tokens, 'c' concurrency, 'b' budget), limit
-- returns             1 if settled now, 0 if there was nothing to settle
--
-- Idempotent across retries and replicas: the lease leaves the registry exactly once, and only that removal
-- settles. A lease that has expired (a request outliving lease_ttl_s) settles nothing: its slot is already back
-- and its reservation stands, which errs on the side of the limit.

local function num(x) return string.format('%.17g', x) end

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = ARGV[1]
local refund = tonumber(ARGV[2])
local window = 60

local expiry = redis.call('ZSCORE', KEYS[1], lease)
if not expiry then return 0 end
redis.call('ZREM', KEYS[1], lease)
if tonumber(expiry) <= now then return 0 end

for i = 2, #KEYS do
  local kind, limit = ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  if kind == 'c' then
    redis.call('ZREM', KEYS[i], lease)
  elseif kind == 'b' then
    -- The period's counter; gone only long after its period ended, when a refund no longer matters.
    if refund ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then
      redis.call('INCRBY', KEYS[i], string.format('%d', -refund))
    end
  elseif refund ~= 0 then
    local state = redis.call('HMGET', KEYS[i], 'v', 't')
    local level = limit
    if state[1] then
      local elapsed = math.max(0, now - tonumber(state[2]))
      level = math.min(limit, tonumber(state[1]) + elapsed * limit / window)
    end
    level = math.min(limit, level + refund)
    redis.call('HSET', KEYS[i], 'v', num(level), 't', num(now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((limit - level) * window / limit * 1000) + 1000)
  end
end
return 1
