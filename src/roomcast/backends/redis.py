"""``redis://host:port/db``: several server processes sharing one Redis (URL, key names, what
the keys hold and the Lua scripts here; the Store in ``redis_store``, its writer task in
``redis_writer``, its presence, node liveness, claims, counters and sessions in
``redis_ephemeral``, the Bus in ``redis_bus``).

How a write is made (one implementation of the rules, in Python):

1. Appends are queued, and a writer task takes everything queued, grouped by channel.
2. For each channel it reads, with one Lua script (:data:`LOAD`), the channel's head (epoch,
   serial, first serial, objects size), the messages the events refer to, their idempotency
   keys and (for object operations) the channel's live objects. (A script rather than a
   MULTI: redis-py's cluster client queues each command of a MULTI through a thread.) A
   group that names none skips it after this node's own commit (step 4 checks the head).
3. It applies the events in Python with ``apply.apply_to_stage``, exactly as the other
   stores do: a refused event takes no serial and writes nothing.
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

import functools
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import msgspec

from roomcast.protocol.messages import Event, Message, ObjectState

from .urls import shown_url

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

# The epoch of a channel with no head yet (local.channel_epoch): from the seed of its slot's
# data (made at the first need, lost with the data), so a read stores nothing per channel and
# the first event fixes the epoch reads reported.
LUA_EPOCH = """
local function channel_epoch(seed_key, candidate, channel)
  local seed = redis.call('GET', seed_key)
  if not seed then
    seed = candidate
    redis.call('SET', seed_key, seed)
  end
  return string.sub(redis.sha1hex(seed .. '\\n' .. channel), 1, 16)
end
"""

# What the writer reads of a channel before it applies events (one slot, one step).
# KEYS: head, messages, objects, idempotency keys...
# ARGV: objects (1/0), msg_serials...
# Returns {epoch, serial, first, obytes}, the messages, the keys' serials, the objects (flat).
LOAD = (
    LUA_HELPERS
    + """
local head = redis.call('HMGET', KEYS[1], 'epoch', 'serial', 'first', 'obytes')
local serials = {}
for i = 2, #ARGV do serials[#serials + 1] = ARGV[i] end
local messages = {}
if #serials > 0 then messages = hmget_list(KEYS[2], serials) end
local found = {}
for i = 4, #KEYS do found[#found + 1] = redis.call('GET', KEYS[i]) end
local objects = {}
if ARGV[1] == '1' then objects = redis.call('HGETALL', KEYS[3]) end
return {head, messages, found, objects}
"""
)

# KEYS: head, log, messages, index, objects, epoch seed, idempotency keys...
# ARGV: expected serial, expected first, epoch seed if none, new serial, now, objects bytes,
#       #objects, #keys, key ttl ms, bus channel, channel,
#       the events as a JSON array with ",\n" between them (what the bus publishes),
#       the changed messages' serials joined by spaces, their bodies joined by newlines,
#       one flag per message ('1': new, '0': changed), (object_id, body)..., key serials...
# Few long arguments: packing each one is Python work on the node's busy loop. Stored JSON
# never holds a raw newline, so the script splits at them (a plain find) and publishes the
# array as it came (building it in Lua cost Redis more than the writes).
COMMIT = (
    LUA_EPOCH
    + """
local head = redis.call('HMGET', KEYS[1], 'epoch', 'serial', 'first')
local epoch = head[1]
if not epoch then
  if tonumber(ARGV[1]) ~= 0 or tonumber(ARGV[2]) ~= 1 then return {0} end
  epoch = channel_epoch(KEYS[6], ARGV[3], ARGV[11])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'first', 1)
elseif tonumber(head[2] or 0) ~= tonumber(ARGV[1])
    or tonumber(head[3] or 1) ~= tonumber(ARGV[2]) then
  return {0}
end
redis.call('HSET', KEYS[1], 'serial', ARGV[4], 'updated', ARGV[5], 'obytes', ARGV[6])
local function hset_fields(key, fields)
  for s = 1, #fields, 500 do
    redis.call('HSET', key, unpack(fields, s, math.min(#fields, s + 499)))
  end
end
local function split(text, sep, pos, last)  -- text[pos..last] at each sep (plain find)
  local out = {}
  while pos <= last do
    local stop = string.find(text, sep, pos, true) or last + 1
    out[#out + 1], pos = string.sub(text, pos, stop - 1), stop + #sep
  end
  return out
end
local serial = tonumber(ARGV[1])
local bodies = split(ARGV[12], ',\\n', 2, #ARGV[12] - 1)  -- inside the array's brackets
local fields = {}
for j = 1, #bodies do
  fields[2 * j - 1] = serial + j
  fields[2 * j] = bodies[j]
end
hset_fields(KEYS[2], fields)
local msg_serials = split(ARGV[13], ' ', 1, #ARGV[13])
local msg_bodies = split(ARGV[14], '\\n', 1, #ARGV[14])
fields = {}
local created = {}
for j = 1, #msg_bodies do
  fields[2 * j - 1] = msg_serials[j]
  fields[2 * j] = msg_bodies[j]
  if string.byte(ARGV[15], j) == 49 then  -- '1': a new message
    created[#created + 1] = msg_serials[j]
    created[#created + 1] = msg_serials[j]
  end
end
hset_fields(KEYS[3], fields)
for s = 1, #created, 500 do
  redis.call('ZADD', KEYS[4], unpack(created, s, math.min(#created, s + 499)))
end
local n_objs, n_keys = tonumber(ARGV[7]), tonumber(ARGV[8])
local i = 16
for _ = 1, n_objs do
  redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for k = 1, n_keys do
  redis.call('SET', KEYS[6 + k], ARGV[i], 'PX', ARGV[9])
  i = i + 1
end
redis.call('SPUBLISH', ARGV[10], 'e' .. epoch .. '\\n' .. ARGV[12])
return {1, epoch}
"""
)

# KEYS: head, log, messages, index, objects, epoch seed
# ARGV: epoch seed if none, from_serial (-1: none), rewind, replay limit, objects (1/0), channel
# A channel with no head (no events) reads as empty, and nothing is written for it.
SNAPSHOT = (
    LUA_HELPERS
    + LUA_EPOCH
    + """
local head = redis.call('HMGET', KEYS[1], 'epoch', 'serial', 'first')
local epoch = head[1]
if not epoch then epoch = channel_epoch(KEYS[6], ARGV[1], ARGV[6]) end
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


def _take_prefix(url: str, query: str) -> tuple[str, list[tuple[str, str]]]:
    """The ``prefix`` parameter of a store URL (default ``roomcast``), and the others."""
    prefix = "roomcast"
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "prefix":
            prefix = value
        else:
            rest.append((name, value))
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError(f"{shown_url(url)!r}: the key prefix must be non-empty, without braces")
    return prefix, rest


def parse_redis_url(url: str) -> tuple[str, str]:
    """``redis://host:port/db?prefix=name`` → (the URL for redis-py, the key prefix)."""
    parts = urlsplit(url)
    prefix, rest = _take_prefix(url, parts.query)
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379


def hosts_text(addresses: tuple[tuple[str, int], ...]) -> str:
    """``host:port,...`` for messages (IPv6 hosts in brackets)."""
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses)


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """What a ``redis+sentinel://`` store URL names (see :func:`parse_sentinel_url`)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    prefix: str
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    tls: bool = False

    @property
    def where(self) -> str:
        """The service and its Sentinels, for messages (never a password)."""
        return f"{self.service} (Sentinels {hosts_text(self.sentinels)})"


def _sentinel_address(
    url: str, item: str, *, what: str = "Sentinel", default_port: int = SENTINEL_PORT
) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, close, rest = item[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ValueError(f"{shown_url(url)!r}: bad {what} address {item!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"{shown_url(url)!r}: a {what} address without a host ({item!r})")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{shown_url(url)!r}: bad port {port_text!r} in {what} address {item!r}")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelURL:
    """``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``,
    with ``?prefix=name`` (the key prefix, default ``roomcast``) and
    ``?sentinel_password=...`` (for Sentinels that require one).

    The password (and user) authenticate to the Redis servers; a port left out is 26379.
    ``rediss+sentinel://`` uses TLS to the Sentinels and to the servers.

    Raises:
        ValueError: Saying what is wrong: no Sentinel address, a bad port, no service name,
            a bad database number, an unknown parameter.
    """
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"{shown_url(url)!r} is not a redis+sentinel:// URL")
    hostlist = parts.netloc.rpartition("@")[2]
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    items = [item.strip() for item in hostlist.split(",")]
    if hostlist and not all(items):
        raise ValueError(f"{shown_url(url)!r}: an empty Sentinel address in {hostlist!r}")
    if not hostlist:
        raise ValueError(
            f"{shown_url(url)!r} names no Sentinel: write redis+sentinel://host:port[,host:port...]/service/db"
        )
    sentinels = tuple(_sentinel_address(url, item) for item in items)
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if path and path[-1] == "":
        path.pop()  # a trailing slash
    if not path or not path[0]:
        raise ValueError(
            f"{shown_url(url)!r} names no service: write redis+sentinel://host:port/service/db "
            "(the name the Sentinels monitor)"
        )
    if len(path) > 2:
        raise ValueError(f"{shown_url(url)!r}: the path is /service/db, not {parts.path!r}")
    db_text = path[1] if len(path) == 2 else "0"
    if not db_text.isdigit():
        raise ValueError(
            f"{shown_url(url)!r}: the database must be a number (0-15 by default), not {db_text!r}"
        )
    prefix, rest = _take_prefix(url, parts.query)
    sentinel_password = None
    for name, value in rest:
        if name != "sentinel_password":
            raise ValueError(
                f"{shown_url(url)!r}: unknown parameter {name!r} (a redis+sentinel:// URL "
                "takes prefix and sentinel_password)"
            )
        sentinel_password = value
    return SentinelURL(
        sentinels,
        path[0],
        int(db_text),
        prefix,
        username,
        password,
        sentinel_password,
        parts.scheme == "rediss+sentinel",
    )


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """What a ``redis+cluster://`` store URL names (see :func:`parse_cluster_url`)."""

    nodes: tuple[tuple[str, int], ...]
    prefix: str
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    @property
    def where(self) -> str:
        """The cluster's startup nodes, for messages (never a password)."""
        return f"the Redis Cluster at {hosts_text(self.nodes)}"


def parse_cluster_url(url: str) -> ClusterURL:
    """``redis+cluster://[[user]:password@]host[:port][,host[:port]...][?prefix=name]``.

    The addresses are startup nodes: any of the cluster's nodes will do, and the client
    learns the others (and which slots each master holds) from the first that answers; list
    several so that a node can start while one is down. A port left out is 6379. A cluster
    has only database 0, so the path is empty (or ``/0``). ``rediss+cluster://`` uses TLS.

    Raises:
        ValueError: Saying what is wrong: no address, a bad port, a database other than 0,
            an unknown parameter.
    """
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"{shown_url(url)!r} is not a redis+cluster:// URL")
    hostlist = parts.netloc.rpartition("@")[2]
    items = [item.strip() for item in hostlist.split(",")]
    if not hostlist or not all(items):
        raise ValueError(
            f"{shown_url(url)!r}: write redis+cluster://host:port[,host:port...] "
            "(the addresses of some of the cluster's nodes)"
        )
    nodes = tuple(
        _sentinel_address(url, item, what="cluster node", default_port=6379) for item in items
    )
    if parts.path not in ("", "/", "/0"):
        raise ValueError(
            f"{shown_url(url)!r}: a Redis Cluster has only database 0, not {parts.path!r}"
        )
    prefix, rest = _take_prefix(url, parts.query)
    if rest:
        raise ValueError(
            f"{shown_url(url)!r}: unknown parameter {rest[0][0]!r} (a redis+cluster:// URL "
            "takes prefix)"
        )
    return ClusterURL(
        nodes,
        prefix,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password is not None else None,
        parts.scheme == "rediss+cluster",
    )


CLUSTER_SLOTS = 16384


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """A short hash tag in each hash slot of a Redis Cluster (by slot), so that a key of a
    given slot can be named. Built once per process (about half a second)."""
    from redis.crc import key_slot

    tags = [""] * CLUSTER_SLOTS
    left, i = CLUSTER_SLOTS, 0
    while left:
        tag = format(i, "x")
        slot = key_slot(tag.encode())
        if not tags[slot]:
            tags[slot] = tag
            left -= 1
        i += 1
    return tuple(tags)


class Keys:
    """Key names. Everything of one channel shares the hash tag ``{channel}``."""

    def __init__(self, prefix: str, *, cluster: bool = False) -> None:
        self.prefix = prefix
        self.cluster = cluster
        self.channels = f"{prefix}:channels"  # sorted set (all scores 0): names by lex order
        self.streaming = f"{prefix}:streaming"  # sorted set: [channel, msg_serial] by update
        self.nodes = f"{prefix}:nodes"  # sorted set: node id by heartbeat expiry (ms)
        self.ready = f"{prefix}:ready"  # string with a TTL: written by the readiness probe
        self.lifetime = f"{prefix}:lifetime"  # string: an id of this data's lifetime

    def tag(self, channel: str) -> str:
        return f"{self.prefix}:{{{channel}}}"

    def channel(self, channel: str) -> list[str]:
        """head, log, messages, index, objects"""
        t = self.tag(channel)
        return [f"{t}:head", f"{t}:log", f"{t}:msg", f"{t}:idx", f"{t}:obj"]

    def epoch_seed(self, channel: str) -> str:
        """The key of the seed of ``channel``'s epoch (string, made at the first need).

        One per store, or on a cluster one per hash slot, in the channel's own slot: the
        scripts read it with the channel's keys, and a master that loses its data loses the
        seeds of its slots with it, so those channels start over under new epochs.
        """
        if not self.cluster:
            return f"{self.prefix}:epochs"
        from redis.crc import key_slot

        return f"{self.prefix}:epochs:{{{slot_tags()[key_slot(channel.encode())]}}}"

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

    def set(self, key: str) -> str:
        return f"{self.prefix}:set:{key}"

    def session(self, key: str) -> str:
        return f"{self.prefix}:session:{key}"


# What the keys hold: JSON, the protocol's data model.
encode_value = msgspec.json.Encoder().encode
decode_event = msgspec.json.Decoder(Event).decode
decode_message = msgspec.json.Decoder(Message).decode
decode_object = msgspec.json.Decoder(ObjectState).decode


def int_or(value: bytes | None, default: int) -> int:
    """A hash field that holds a number, or ``default`` if it is not there."""
    return default if value is None else int(value)


def objects_from_flat(flat: list[bytes]) -> dict[str, ObjectState]:
    """A script's ``HGETALL`` of live objects (id, state, id, state, ...)."""
    pairs = iter(flat)
    return {oid.decode(): decode_object(body) for oid, body in zip(pairs, pairs, strict=True)}


__all__ = [
    "CLUSTER_SCHEMES",
    "CLUSTER_SLOTS",
    "COMMIT",
    "LOAD",
    "PURGE",
    "READ_EVENTS",
    "SENTINEL_SCHEMES",
    "SNAPSHOT",
    "ClusterURL",
    "Keys",
    "SentinelURL",
    "decode_event",
    "decode_message",
    "decode_object",
    "encode_value",
    "int_or",
    "objects_from_flat",
    "parse_cluster_url",
    "parse_redis_url",
    "parse_sentinel_url",
    "slot_tags",
]
