-- Publish this replica's heartbeat and count the live replicas (for the fail-open shares).
-- KEYS[1]  sorted set {replica id -> last heartbeat, server time}
-- ARGV[1]  replica id
-- ARGV[2]  seconds after which a silent replica no longer counts
-- returns  the number of live replicas, this one included

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local stale = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.17g', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now - stale))
redis.call('PEXPIRE', KEYS[1], math.ceil(stale * 1000))
return redis.call('ZCARD', KEYS[1])
