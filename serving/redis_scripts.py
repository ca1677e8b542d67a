"""The Redis event store's writes, each one Lua script: Redis runs a script atomically and
logs its effects to the append-only file as one unit, so a write is all there or not at all,
even across a crash. Keys and arguments are documented per script; `serving.redis_store`
builds them."""

from __future__ import annotations

from serving.events import POSITIVE

#: Lua: is an event of this type part of a history (and so counted per item)?
_POSITIVE = "local positive = {" + ", ".join(f"{t} = true" for t in POSITIVE) + "}\n"
#: Lua: one positive event of item `e.i` fewer in the per-item counts (KEYS[...] given)
_UNCOUNT = (
    "local function uncount(key, e)\n"
    "  if positive[e.t] and tonumber(redis.call('HGET', key, e.i) or '0') > 0 then\n"
    "    redis.call('HINCRBY', key, e.i, -1)\n"
    "  end\n"
    "end\n"
)

#: KEYS: seq, eids, users, attributed, n_events, item_counts, then per event (ev, ver) of its
#: user. ARGV: per event: pseudonym, event id ('' for none), body JSON, '1' if attributed,
#: the item id if the event is positive ('' if not: it is not counted for the item).
#: Returns how many were stored (a repeated event id, stored or earlier in the batch, is not).
APPEND = """
local stored, seen = 0, {}
for i = 1, (#KEYS - 6) / 2 do
  local a = (i - 1) * 5
  local who, eid, body = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local dup = false
  if eid ~= '' then
    dup = seen[eid] or redis.call('HEXISTS', KEYS[2], eid) == 1
    seen[eid] = true
  end
  if not dup then
    local seq = redis.call('INCR', KEYS[1])
    redis.call('HSET', KEYS[5 + 2 * i], seq, body)
    redis.call('SET', KEYS[6 + 2 * i], seq)
    if eid ~= '' then redis.call('HSET', KEYS[2], eid, who) end
    redis.call('SADD', KEYS[3], who)
    if ARGV[a + 4] == '1' then redis.call('ZADD', KEYS[4], seq, who .. '/' .. seq) end
    if ARGV[a + 5] ~= '' then redis.call('HINCRBY', KEYS[6], ARGV[a + 5], 1) end
    stored = stored + 1
  end
end
if stored > 0 then redis.call('INCRBY', KEYS[5], stored) end
return stored
"""

#: KEYS: the user's ev, ver, cache, imp, attrs; then eids, users, attributed, imp, imp_ts,
#: n_events, cached, erased, item_counts. ARGV: pseudonym, now (recorded in `erased`: the
#: erasure list retraining honours). Returns {events, cached lists, impressions, attributes}.
DELETE_USER = (
    _POSITIVE
    + _UNCOUNT
    + """
local who = ARGV[1]
local evs = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #evs, 2 do
  local e = cjson.decode(evs[i + 1])
  if e.e then redis.call('HDEL', KEYS[6], e.e) end
  if e.r then redis.call('ZREM', KEYS[8], who .. '/' .. evs[i]) end
  uncount(KEYS[14], e)
  n = n + 1
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[7], who)
if n > 0 then redis.call('DECRBY', KEYS[11], n) end
local cached = redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[12], who)
local shown = 0
for _, r in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  shown = shown + redis.call('HDEL', KEYS[9], r)
  redis.call('ZREM', KEYS[10], r)
end
redis.call('DEL', KEYS[4])
local attrs = redis.call('DEL', KEYS[5])
redis.call('HSET', KEYS[13], who, ARGV[2])
return {n, cached, shown, attrs}
"""
)

#: KEYS: item_ids, items. ARGV: item id, body JSON. Returns 1 if added, 0 if it existed.
ADD_ITEM = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
"""

#: KEYS: the user's cache, cached. ARGV: pseudonym, version, payload JSON. An entry of a newer
#: version is kept (a slow computation finishing late must not replace it).
CACHE_PUT = """
local old = redis.call('HGET', KEYS[1], 'version')
if old and tonumber(old) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'payload', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

#: KEYS: imp, imp_ts, the user's imp. ARGV: request id, timestamp, body JSON. A request id
#: is logged once.
LOG_IMPRESSION = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""

#: KEYS: the user's ev, ver; then eids, users, attributed, n_events, item_counts. ARGV:
#: pseudonym, cutoff. Deletes the user's events with a timestamp before the cutoff; returns
#: how many.
PURGE_USER = (
    _POSITIVE
    + _UNCOUNT
    + """
local who, cutoff = ARGV[1], tonumber(ARGV[2])
local evs = redis.call('HGETALL', KEYS[1])
local n, newest = 0, 0
for i = 1, #evs, 2 do
  local e = cjson.decode(evs[i + 1])
  if e.ts < cutoff then
    redis.call('HDEL', KEYS[1], evs[i])
    if e.e then redis.call('HDEL', KEYS[3], e.e) end
    if e.r then redis.call('ZREM', KEYS[5], who .. '/' .. evs[i]) end
    uncount(KEYS[7], e)
    n = n + 1
  elseif tonumber(evs[i]) > newest then
    newest = tonumber(evs[i])
  end
end
if newest == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[4], who)
else
  redis.call('SET', KEYS[2], newest)
end
if n > 0 then redis.call('DECRBY', KEYS[6], n) end
return n
"""
)

#: KEYS: imp, imp_ts, the user's imp. ARGV: request id. Returns 1 if it was there.
PURGE_IMPRESSION = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
"""
