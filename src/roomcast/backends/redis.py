"""``redis://host:port/db``: several server processes sharing one Redis (URL, key names and Lua
scripts here; the Store in ``redis_store``, the Bus in ``redis_bus``).

How a write is made (one implementation of the rules, in Python):

1. Appends are queued, and a writer task takes everything queued, grouped by channel.
2. For each channel it reads, in one MULTI/EXEC, the channel's head (epoch, serial, first
   serial, objects size), the messages the events refer to, their idempotency keys and (for
   object operations) the channel's live objects.
3. It applies the events in Python with ``rollup.admit``/``apply_event`` and ``objects.plan``
   exactly as the other stores do: a refused event takes no serial and writes nothing.
4. It commits with one Lua script (:data:`COMMIT`) that first checks that the channel's
   serial and first serial are still those it read (a compare-and-set on the channel), then
   writes the events, messages, objects, idempotency keys (with a TTL: the dedup window) and
   the new head, and publishes the events (``SPUBLISH``) on the channel's pub/sub channel.
   If another node wrote to the channel in between, the script writes nothing and the
   writer reads again and retries.

Every key of a channel carries the ``{channel}`` hash tag, so each script touches one slot
(Redis Cluster). The two global indexes (the channel names, for prefix listing, and the
streaming messages, for the sweeper) are updated right after a commit that changes them;
the streaming index is checked against the messages when read, so it heals itself.

Presence members live in a hash per channel, with the node that holds them; each node has a
set of what it holds and a heartbeat score in ``<prefix>:nodes``. The node that removes a
dead node from that sorted set (ZREM returns 1 for one node only) reaps its members.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Lua helpers: HMGET/HDEL in chunks (unpack has a stack limit).
LUA_HELPERS = """
local function hmget_range(key, lo, hi)
  local out = {}
  local s = lo
  while s <= hi do
    local e = math.min(hi, s + 499)
    local fields = {}
    for i = s, e do fields[#fields + 1] = i end
    local got = redis.call('HMGET', key, unpack(fields))
    for i = 1, #got do out[#out + 1] = got[i] end
    s = e + 1
  end
  return out
end
local function hmget_list(key, fields)
  local out = {}
  for s = 1, #fields, 500 do
    local part = {}
    for i = s, math.min(#fields, s + 499) do part[#part + 1] = fields[i] end
    local got = redis.call('HMGET', key, unpack(part))
    for i = 1, #got do out[#out + 1] = got[i] end
  end
  return out
end
"""

# KEYS: head, log, messages, index, objects, idempotency keys...
# ARGV: expected serial, expected first, epoch if new, new serial, now, objects bytes,
#       #events, #messages, #objects, #keys, key ttl ms, bus channel,
#       event bodies..., (msg_serial, body, is_new)..., (object_id, body)..., key serials...
COMMIT = """
local head = redis.call('HMGET', KEYS[1], 'epoch', 'serial', 'first')
local epoch = head[1]
if not epoch then
  if tonumber(ARGV[1]) ~= 0 or tonumber(ARGV[2]) ~= 1 then return {0} end
  epoch = ARGV[3]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'first', 1)
elseif tonumber(head[2] or 0) ~= tonumber(ARGV[1])
    or tonumber(head[3] or 1) ~= tonumber(ARGV[2]) then
  return {0}
end
redis.call('HSET', KEYS[1], 'serial', ARGV[4], 'updated', ARGV[5], 'obytes', ARGV[6])
local n_events, n_msgs = tonumber(ARGV[7]), tonumber(ARGV[8])
local n_objs, n_keys = tonumber(ARGV[9]), tonumber(ARGV[10])
local i = 13
local serial = tonumber(ARGV[1])
local bodies = {}
for j = 1, n_events do
  serial = serial + 1
  bodies[j] = ARGV[i]
  redis.call('HSET', KEYS[2], serial, ARGV[i])
  i = i + 1
end
for _ = 1, n_msgs do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  if ARGV[i + 2] == '1' then redis.call('ZADD', KEYS[4], ARGV[i], ARGV[i]) end
  i = i + 3
end
for _ = 1, n_objs do
  redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for j = 1, n_keys do
  redis.call('SET', KEYS[5 + j], ARGV[i], 'PX', ARGV[11])
  i = i + 1
end
redis.call('SPUBLISH', ARGV[12], 'e' .. epoch .. '\\n[' .. table.concat(bodies, ',') .. ']')
return {1, epoch}
"""

# KEYS: head, log, messages, index, objects
# ARGV: epoch if new, from_serial (-1: none), rewind, replay limit, objects (1/0)
SNAPSHOT = (
    LUA_HELPERS
    + """
local head = redis.call('HMGET', KEYS[1], 'epoch', 'serial', 'first')
local epoch = head[1]
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'serial', 0, 'first', 1)
end
local serial, first = tonumber(head[2] or 0), tonumber(head[3] or 1)
local messages = {}
local rewind = tonumber(ARGV[3])
if rewind > 0 then
  local ids = redis.call('ZREVRANGEBYSCORE', KEYS[4], '+inf', '-inf', 'LIMIT', 0, rewind)
  messages = hmget_list(KEYS[3], ids)
end
local from = tonumber(ARGV[2])
local has_events, events = 0, {}
if from >= 0 and first - 1 <= from and from <= serial then
  has_events = 1
  events = hmget_range(KEYS[2], from + 1, math.min(serial, from + tonumber(ARGV[4])))
end
local objects = {}
if ARGV[5] == '1' then objects = redis.call('HGETALL', KEYS[5]) end
return {epoch, serial, first, messages, has_events, events, objects}
"""
)

# KEYS: head, log. ARGV: after, limit
READ_EVENTS = (
    LUA_HELPERS
    + """
local head = redis.call('HMGET', KEYS[1], 'serial', 'first')
local serial, first = tonumber(head[1] or 0), tonumber(head[2] or 1)
local lo = math.max(tonumber(ARGV[1]) + 1, first)
local hi = math.min(serial, tonumber(ARGV[1]) + tonumber(ARGV[2]))
if hi < lo then return {} end
return hmget_range(KEYS[2], lo, hi)
"""
)

# KEYS: head, log, messages, index. ARGV: expected first, new first, msg_serials to drop...
PURGE = """
local first = tonumber(redis.call('HGET', KEYS[1], 'first') or 1)
if first ~= tonumber(ARGV[1]) then return -1 end
local new_first = tonumber(ARGV[2])
for s = first, new_first - 1, 500 do
  local fields = {}
  for i = s, math.min(new_first - 1, s + 499) do fields[#fields + 1] = i end
  redis.call('HDEL', KEYS[2], unpack(fields))
end
for i = 3, #ARGV do
  redis.call('HDEL', KEYS[3], ARGV[i])
  redis.call('ZREM', KEYS[4], ARGV[i])
end
redis.call('HSET', KEYS[1], 'first', new_first)
return new_first - first
"""

# KEYS: claim. ARGV: owner, ttl ms
CLAIM = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: counter. ARGV: amount, ttl ms
COUNTER = """
local total = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return total
"""


def parse_redis_url(url: str) -> tuple[str, str]:
    """``redis://host:port/db?prefix=name`` → (the URL for redis-py, the key prefix)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = "roomcast"
    rest: list[tuple[str, str]] = []
    for name, value in query:
        if name == "prefix":
            prefix = value
        else:
            rest.append((name, value))
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError(f"{url!r}: the key prefix must be non-empty, without braces")
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix


class Keys:
    """Key names. Everything of one channel shares the hash tag ``{channel}``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.channels = f"{prefix}:channels"  # sorted set (all scores 0): names by lex order
        self.streaming = f"{prefix}:streaming"  # sorted set: [channel, msg_serial] by update
        self.nodes = f"{prefix}:nodes"  # sorted set: node id by heartbeat expiry (ms)

    def tag(self, channel: str) -> str:
        return f"{self.prefix}:{{{channel}}}"

    def channel(self, channel: str) -> list[str]:
        """head, log, messages, index, objects"""
        t = self.tag(channel)
        return [f"{t}:head", f"{t}:log", f"{t}:msg", f"{t}:idx", f"{t}:obj"]

    def idempotency(self, channel: str, key: str) -> str:
        return f"{self.tag(channel)}:key:{key}"

    def presence(self, channel: str) -> str:
        return f"{self.tag(channel)}:presence"

    def held_by(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}:members"

    def claim(self, key: str) -> str:
        return f"{self.prefix}:claim:{key}"

    def counter(self, key: str) -> str:
        return f"{self.prefix}:counter:{key}"

    def session(self, key: str) -> str:
        return f"{self.prefix}:session:{key}"


__all__ = [
    "CLAIM",
    "COMMIT",
    "COUNTER",
    "PURGE",
    "READ_EVENTS",
    "SNAPSHOT",
    "Keys",
    "parse_redis_url",
]
