-- Publishes one event on a channel, keeping history where the channel's namespace does, in one
-- atomic step: offset = previous + 1, stored in the channel's stream, then PUBLISHed.
--
-- KEYS[1] history stream  <prefix>:{<channel>}:stream  (entry id 0-<offset>, field m = message)
-- KEYS[2] history meta    <prefix>:{<channel>}:meta    (hash: offset, epoch)
-- KEYS[3] namespaces      <prefix>:namespaces          (hash: namespace -> "<size> <ttl_ms>",
--                                                       and :idempotency_window_ms -> ms;
--                                                       written by every gateway at start)
-- KEYS[4] idempotency     <prefix>:{<channel>}:idem:<key>, or "" for none
-- ARGV[1] topic           <prefix>:ch:<channel> (<prefix>:ch:{<channel>} on a cluster)
-- ARGV[2] message         the bus message as a JSON object, without offset and epoch
-- ARGV[3] namespace       the channel's namespace (default, personal, or the part before ':')
-- ARGV[4] window          how long an idempotency key is remembered, in milliseconds, or ""
--                         for the gateways' window from KEYS[3] (300000 if none is there)
-- ARGV[5] policy          "<size> <ttl_ms>": the namespace's policy, when the caller knows it
--                         (gateways do), or "" to read it from KEYS[3]
-- ARGV[6] "SPUBLISH" on a Redis Cluster, where every key of a call must share the channel's
--         slot: KEYS[3] is then the idempotency key (or absent), there is no namespaces key,
--         and ARGV[4] and ARGV[5] must be given. Absent (or "PUBLISH") otherwise.
--
-- The offset and epoch go into the message by the rule of publisher::wire::with_position: its
-- closing '}' becomes ,"offset":<offset>,"epoch":"<epoch>"}.
--
-- Returns {offset, epoch, duplicate}: offset 0 and epoch "" where no history is kept;
-- duplicate 1 when the idempotency key was seen, and then nothing is published.
local sharded = ARGV[6] == 'SPUBLISH'
local namespaces, idempotency = KEYS[3], KEYS[4]
if sharded then
  namespaces, idempotency = nil, KEYS[3]
  if ARGV[4] == '' or ARGV[5] == '' then
    return redis.error_reply('ERR on a cluster the caller passes the window and policy')
  end
end
if idempotency == '' then
  idempotency = nil
end
if idempotency then
  local seen = redis.call('GET', idempotency)
  if seen then
    local offset, epoch = string.match(seen, '^(%d+) (.*)$')
    return {tonumber(offset), epoch, 1}
  end
end
local size, ttl = 0, 0
local policy = ARGV[5]
if not policy or policy == '' then
  policy = redis.call('HGET', namespaces, ARGV[3])
end
if policy then
  local s, t = string.match(policy, '^(%d+) (%d+)$')
  size, ttl = tonumber(s) or 0, tonumber(t) or 0
end
local message, offset, epoch = ARGV[2], 0, ''
if size > 0 then
  epoch = redis.call('HGET', KEYS[2], 'epoch')
  if not epoch then
    local now = redis.call('TIME')
    epoch = now[1] .. string.format('%06d', tonumber(now[2]))
    redis.call('HSET', KEYS[2], 'epoch', epoch)
  end
  offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
  if string.sub(message, -1) == '}' then
    message = string.sub(message, 1, -2)
  end
  message = message .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}'
  redis.call('XADD', KEYS[1], 'MAXLEN', size, '0-' .. offset, 'm', message)
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end
if sharded then
  redis.call('SPUBLISH', ARGV[1], message)
else
  redis.call('PUBLISH', ARGV[1], message)
end
if idempotency then
  local window = ARGV[4]
  if window == '' then
    window = redis.call('HGET', namespaces, ':idempotency_window_ms') or '300000'
  end
  window = tonumber(window) or 300000
  if window > 0 then
    redis.call('SET', idempotency, offset .. ' ' .. epoch, 'PX', window)
  end
end
return {offset, epoch, 0}
