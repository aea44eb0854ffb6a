// A channel's live objects (maps and counters), kept current as the server keeps them.

function isReference(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length === 1 && typeof value.object_id === "string";
}

/**
 * A channel's live objects (docs/protocol.md §5): the `attached` snapshot, then each
 * `object` event applied in serial order with the server's rules. `state` maps object_id
 * to `{type: "map", entries}` or `{type: "counter", value}`.
 */
export class LiveObjects {
  constructor(channel) {
    this.channel = channel;
    this.state = null;
    this.serial = null;
  }
  get ready() {
    return this.state !== null;
  }
  /** A map's entries (references left as `{object_id}`), or null. */
  entries(objectId) {
    const found = this.state?.[objectId];
    if (found?.type === "map") return found.entries || {};
    return objectId === "root" && this.state ? {} : null;
  }
  /** The object a map value refers to (its id), or null. */
  ref(value) {
    return isReference(value) ? value.object_id : null;
  }
  counter(objectId) {
    const found = this.state?.[objectId];
    return found?.type === "counter" ? found.value : null;
  }
  /** Send one operation; resolves with the `ok` (`serial`, `object_id` for a create). */
  apply(op) {
    return this.channel.client.request({ action: "object", channel: this.channel.name, op });
  }
  async createMap(entries = {}) {
    return (await this.apply({ type: "map.create", entries })).object_id;
  }
  async createCounter(value = 0) {
    return (await this.apply({ type: "counter.create", value })).object_id;
  }
  set(objectId, key, value) {
    return this.apply({ type: "map.set", object_id: objectId, key, value });
  }
  remove(objectId, key) {
    return this.apply({ type: "map.remove", object_id: objectId, key });
  }
  increment(objectId, amount = 1) {
    return this.apply({ type: "counter.inc", object_id: objectId, amount });
  }
  /** `root.<key>`: a map of references, made on first use. */
  async index(key) {
    const existing = this.ref(this.entries("root")?.[key]);
    if (existing && this.entries(existing)) return existing;
    const made = await this.createMap({});
    await this.set("root", key, { object_id: made });
    return this.ref(this.entries("root")?.[key]) || made;
  }

  _onAttached(reply, resumed) {
    if (reply.objects && (!resumed || this.state === null)) {
      this.state = structuredClone(reply.objects.objects || {});
      this.serial = reply.objects.serial;
      this.channel.emit("objects", this, null);
    }
  }
  _onEvent(event) {
    if (this.state === null) return;
    this.serial = event.serial;
    if (event.type !== "object") return;
    const op = event.op || {};
    const state = this.state;
    let id = op.object_id;
    if (op.type === "map.create") {
      id = `map-${event.serial}`;
      state[id] = { type: "map", entries: { ...(op.entries || {}) } };
    } else if (op.type === "counter.create") {
      id = `counter-${event.serial}`;
      state[id] = { type: "counter", value: op.value ?? 0 };
    } else if (op.type === "counter.inc") {
      const current = state[id] || { type: "counter", value: 0 };
      state[id] = { type: "counter", value: (current.value || 0) + (op.amount ?? 1) };
    } else if (op.type === "map.set" || op.type === "map.remove") {
      const current = state[id] || { type: "map", entries: {} };
      const entries = { ...(current.entries || {}) };
      if (op.type === "map.set") entries[op.key] = op.value;
      else delete entries[op.key];
      state[id] = { type: "map", entries };
    }
    this.channel.emit("objects", this, id);
  }
}
