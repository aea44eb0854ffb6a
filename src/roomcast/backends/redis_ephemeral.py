"""The ephemeral state of the Redis store: presence members, node liveness, the store's
lifetime, claims, counters, sets and resume sessions, with their Lua scripts (see ``redis``
for how presence is kept)."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from roomcast.protocol.messages import PresenceMember

from .base import DEFAULT_NODE_TTL_S, TAKEN_TTL_S, ResumeSession
from .local import new_epoch
from .redis import Keys, encode_value
from .redis_errors import RedisErrors

_session = msgspec.json.Decoder(ResumeSession).decode
_held = msgspec.json.Decoder(tuple[str, PresenceMember]).decode
_triple = msgspec.json.Decoder(tuple[str, str, str]).decode


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


# KEYS: set. ARGV: member, '1' to add or '0' to remove, ttl ms. The set lives ttl ms after
# its latest change (a set left empty is gone).
CHANGE_SET = """
if ARGV[2] == '1' then
  redis.call('SADD', KEYS[1], ARGV[1])
else
  redis.call('SREM', KEYS[1], ARGV[1])
end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


# A presence hash's field holds ``["<node id>",<member>]`` (node ids hold no quote).
# KEYS: presence hash. ARGV: field, holder ('' for any). Returns the removed body, or nil.
PRESENCE_REMOVE = """
local body = redis.call('HGET', KEYS[1], ARGV[1])
if not body then return nil end
if ARGV[2] ~= '' and string.sub(body, 1, #ARGV[2] + 4) ~= '["' .. ARGV[2] .. '",' then
  return nil
end
redis.call('HDEL', KEYS[1], ARGV[1])
return body
"""

# KEYS: presence hash. ARGV: field, new holder. Returns the body as it was, or nil.
PRESENCE_ADOPT = """
local body = redis.call('HGET', KEYS[1], ARGV[1])
if not body then return nil end
local member = string.match(body, '^%[".-",(.*)$')
redis.call('HSET', KEYS[1], ARGV[1], '["' .. ARGV[2] .. '",' .. member)
return body
"""

TAKEN = b"taken"  # what a taken resume key holds

# KEYS: session. ARGV: body, ttl ms. 0 if the key was taken (nothing written), else 1.
KEEP_SESSION = """
if redis.call('GET', KEYS[1]) == 'taken' then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class RedisEphemeralState:
    """Presence, node liveness, lifetime, claims, counters, sets and resume sessions, in Redis:
    the ephemeral half of :class:`~.redis_store.RedisStore` (which it is a base of).

    Args:
        redis: The store's client.
        keys: The store's key names.
        errors: The store's error mapping.
        cluster: Whether ``redis`` is a Redis Cluster client.
    """

    def __init__(self, redis: Any, keys: Keys, errors: RedisErrors, *, cluster: bool) -> None:
        self.redis = redis
        self.k = keys
        self._errors = errors
        self._cluster = cluster
        self._claim = redis.register_script(CLAIM)
        self._presence_remove = redis.register_script(PRESENCE_REMOVE)
        self._presence_adopt = redis.register_script(PRESENCE_ADOPT)
        self._keep_session = redis.register_script(KEEP_SESSION)
        self._counter = redis.register_script(COUNTER)
        self._change_set = redis.register_script(CHANGE_SET)
        self._node_ttls: dict[str, float] = {}  # node → the ttl of its heartbeats
        self._clock_offset_ms: int | None = None  # Redis's clock minus this machine's

    # ------------------------------------------------------------ presence and nodes

    async def presence_set(self, channel: str, member: PresenceMember, node_id: str) -> None:
        field_name = member.client_id + "\0" + member.connection_id
        held = encode_value((channel, member.client_id, member.connection_id))
        with self._errors():
            until = await self._node_expiry(node_id)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(self.k.presence(channel), field_name, encode_value((node_id, member)))
                pipe.sadd(self.k.held_by(node_id), held)
                # The node is known alive even if its heartbeat entry was lost (a flush): a
                # node that dies before its next heartbeat still has this member reaped.
                pipe.zadd(self.k.nodes, {node_id: until}, nx=True)
                await pipe.execute()

    async def presence_remove(
        self, channel: str, client_id: str, connection_id: str, *, holder: str | None = None
    ) -> bool:
        with self._errors():
            body = await self._remove_member(channel, client_id, connection_id, holder)
        return body is not None

    async def _remove_member(
        self, channel: str, client_id: str, connection_id: str, holder: str | None
    ) -> bytes | None:
        field_name = client_id + "\0" + connection_id
        body: bytes | None = await self._presence_remove(
            keys=[self.k.presence(channel)], args=[field_name, holder or ""]
        )
        if body is not None:
            node_id, _ = _held(body)
            held = encode_value((channel, client_id, connection_id))
            await self.redis.srem(self.k.held_by(node_id), held)
        return body

    async def presence_adopt(
        self, channel: str, client_id: str, connection_id: str, node_id: str
    ) -> PresenceMember | None:
        field_name = client_id + "\0" + connection_id
        held = encode_value((channel, client_id, connection_id))
        with self._errors():
            body = await self._presence_adopt(
                keys=[self.k.presence(channel)], args=[field_name, node_id]
            )
            if body is None:
                return None
            old_node, member = _held(body)
            until = await self._node_expiry(node_id)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.sadd(self.k.held_by(node_id), held)
                if old_node != node_id:
                    pipe.srem(self.k.held_by(old_node), held)
                pipe.zadd(self.k.nodes, {node_id: until}, nx=True)
                await pipe.execute()
        return member

    async def presence_members(self, channel: str) -> list[PresenceMember]:
        with self._errors():
            rows = await self.redis.hvals(self.k.presence(channel))
        return [_held(body)[1] for body in rows]

    async def _redis_ms(self) -> int:
        """Redis's clock: node liveness must not depend on the nodes' clocks agreeing."""
        seconds, micros = await self.redis.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        self._clock_offset_ms = now - int(time.time() * 1000)
        return now

    async def _node_expiry(self, node_id: str) -> int:
        """When ``node_id``'s liveness lapses if it sends no heartbeat from now (Redis ms)."""
        ttl_ms = int(self._node_ttls.get(node_id, DEFAULT_NODE_TTL_S) * 1000)
        if self._clock_offset_ms is None:
            return await self._redis_ms() + ttl_ms
        return int(time.time() * 1000) + self._clock_offset_ms + ttl_ms

    async def node_heartbeat(self, node_id: str, ttl_s: float) -> None:
        self._node_ttls[node_id] = ttl_s
        with self._errors():
            until = await self._redis_ms() + int(ttl_s * 1000)
            await self.redis.zadd(self.k.nodes, {node_id: until})

    async def lifetime(self) -> str:
        candidate = new_epoch()
        ids: list[str] = []
        with self._errors():
            for key in await self._lifetime_keys():
                found = await self.redis.set(key, candidate, nx=True, get=True)
                ids.append(candidate if found is None else found.decode())
        return "/".join(ids)

    async def _lifetime_keys(self) -> list[str]:
        """``P:lifetime``, and on a cluster one key more on each other master: a master
        restarted without its data resets only its own slots, and the nodes must notice
        that too. (A change of the masters, as in a resharding, changes the keys and reads
        as a reset: the nodes then put back what they hold, which is harmless.)"""
        keys = [self.k.lifetime]
        if not self._cluster:
            return keys
        if self.redis.nodes_manager.default_node is None:
            await self.redis.initialize()
        masters = {node.name for node in self.redis.get_primaries()}
        owner = self.redis.nodes_manager.get_node_from_slot
        covered = {owner(self.redis.keyslot(self.k.lifetime)).name}
        tag = 0
        while covered < masters and tag < 100_000:
            key = f"{self.k.lifetime}:{{{tag}}}"
            name = owner(self.redis.keyslot(key)).name
            if name not in covered:
                covered.add(name)
                keys.append(key)
            tag += 1
        return keys

    async def reap_dead_nodes(self) -> list[tuple[str, PresenceMember]]:
        reaped: list[tuple[str, PresenceMember]] = []
        with self._errors():
            now = await self._redis_ms()
            dead = await self.redis.zrangebyscore(self.k.nodes, "-inf", f"({now}")
            for raw in dead:
                if not await self.redis.zrem(self.k.nodes, raw):
                    continue  # another node is reaping it
                reaped += await self._reap(raw.decode())
        return reaped

    async def _reap(self, node_id: str) -> list[tuple[str, PresenceMember]]:
        reaped: list[tuple[str, PresenceMember]] = []
        held_key = self.k.held_by(node_id)
        for raw in await self.redis.smembers(held_key):
            channel, client_id, connection_id = _triple(raw)
            # Only what the dead node still holds: a member that resumed elsewhere stays.
            body = await self._remove_member(channel, client_id, connection_id, node_id)
            if body is not None:
                reaped.append((channel, _held(body)[1]))
        await self.redis.delete(held_key)
        return reaped

    # ------------------------------------------------------------ claims, counters, sessions

    async def claim(self, key: str, owner: str, ttl_s: float) -> bool:
        with self._errors():
            won = await self._claim(
                keys=[self.k.claim(key)], args=[owner, max(1, int(ttl_s * 1000))]
            )
        return bool(int(won))

    async def incr_counter(self, key: str, amount: float, ttl_s: float) -> float:
        with self._errors():
            total = await self._counter(
                keys=[self.k.counter(key)], args=[repr(float(amount)), max(1, int(ttl_s * 1000))]
            )
        return float(total)

    async def change_set(self, key: str, member: str, *, present: bool, ttl_s: float) -> None:
        with self._errors():
            await self._change_set(
                keys=[self.k.set(key)],
                args=[member, "1" if present else "0", max(1, int(ttl_s * 1000))],
            )

    async def set_members(self, key: str) -> set[str]:
        with self._errors():
            members = await self.redis.smembers(self.k.set(key))
        return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    async def save_session(self, key: str, session: ResumeSession) -> None:
        ttl_ms = int((session.expires_at - time.time()) * 1000)
        with self._errors():
            if ttl_ms <= 0:
                await self.redis.delete(self.k.session(key))
                return
            await self.redis.set(self.k.session(key), encode_value(session), px=ttl_ms)

    async def keep_session(self, key: str, session: ResumeSession) -> bool:
        ttl_ms = max(1, int((session.expires_at - time.time()) * 1000))
        with self._errors():
            kept = await self._keep_session(
                keys=[self.k.session(key)], args=[encode_value(session), ttl_ms]
            )
        return bool(int(kept))

    async def take_session(self, key: str) -> ResumeSession | None:
        with self._errors():
            body = await self.redis.set(
                self.k.session(key), TAKEN, px=int(TAKEN_TTL_S * 1000), get=True
            )
        if body is None or body == TAKEN:
            return None
        session = _session(body)
        return session if session.expires_at > time.time() else None


__all__ = ["RedisEphemeralState"]
