// roomcast.js: a browser client for roomcast's wire protocol (PROTOCOL.md version 1).
//
// A plain ES module with no dependencies. It keeps what must outlive a socket: the resume
// key, the channels and their positions (the last serial each delivered), the requests not
// yet answered. When the socket drops it reconnects with backoff, resumes (`?resume=`),
// re-attaches every channel with `from_serial` and re-sends what was never answered, so
// nothing is lost or doubled. It keeps a channel's presence, live objects (maps, counters,
// polls, boards) current, and renews a token (the `auth` action) before it expires.
//
//   import { Client } from "/static/roomcast.js";
//   const client = new Client({ clientId: "alice" });
//   const lunch = client.channel("room:lunch");
//   lunch.on("event", (event) => console.log(event.serial, event.type, event.data));
//   await lunch.attach({ rewind: 50 });
//   await lunch.publish("tacos?");
//
// See docs/web.md for the whole API.

export const CLOSE_AUTH = 4001;
// Close codes after which reconnecting cannot help (bad credentials, frames refused).
const TERMINAL_CLOSE_CODES = new Set([1002, 1003, 1007, 1008]);
const STABLE_AFTER_MS = 1000;
const RENEW_BEFORE_S = 30;
const FRESH_FOR_S = 5;

/** An `error` reply from the server, as an exception. */
export class RoomcastError extends Error {
  constructor(code, message, channel) {
    super(message || `error ${code}`);
    this.name = "RoomcastError";
    this.code = code;
    this.channel = channel ?? null;
  }
}

/** Exponential backoff with full jitter: attempt n waits uniform(0, min(max, initial * 2^n)). */
export class Backoff {
  constructor({ initial = 100, maximum = 10000, multiplier = 2 } = {}) {
    Object.assign(this, { initial, maximum, multiplier, attempts: 0 });
  }
  nextDelay() {
    const cap = Math.min(this.maximum, this.initial * this.multiplier ** Math.min(this.attempts, 64));
    this.attempts += 1;
    return Math.random() * cap;
  }
  reset() {
    this.attempts = 0;
  }
}

/** A token's `exp` in seconds, read without verifying it; null if it has none. */
export function tokenExpiry(token) {
  const parts = String(token || "").split(".");
  if (parts.length !== 3) return null;
  try {
    const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/"));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

/** Seconds until a token with `remaining` seconds of life should be renewed. */
export function renewDelay(remaining) {
  if (remaining <= 0) return 0;
  return Math.min((remaining * 2) / 3, Math.max(remaining - RENEW_BEFORE_S, remaining / 2));
}

/** A small event emitter: `on(name, fn)` returns a function that removes the listener. */
class Emitter {
  constructor() {
    this._listeners = new Map();
  }
  on(name, fn) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return () => this._listeners.get(name)?.delete(fn);
  }
  emit(name, ...args) {
    for (const fn of [...(this._listeners.get(name) || [])]) {
      try {
        fn(...args);
      } catch (error) {
        console.error(`roomcast: a "${name}" listener failed`, error);
      }
    }
  }
}

function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/v1/ws`;
}

let publishCounter = 0;
/** An idempotency key for a publish, so that re-sending it after a reconnect is safe. */
export function newPublishId() {
  const random = crypto.getRandomValues(new Uint32Array(2));
  publishCounter += 1;
  return `rc-${Date.now().toString(36)}-${random[0].toString(36)}${random[1].toString(36)}-${publishCounter}`;
}

/**
 * A connection to a roomcast server that reconnects and resumes by itself.
 *
 * Options: `url` (default: this page's server, `/v1/ws`), `clientId` (anonymous access),
 * `token` (a signed token), `authCallback` (an async function returning a fresh token: used
 * at connect, before expiry and after a 4001), `backoff`.
 *
 * Events (`client.on(name, fn)`): `state` ({state, resumed, reason}), `connected`
 * (the `connected` message), `error` (an `error` with no ref), `failed` (a RoomcastError).
 * `state` is `connecting`, `connected`, `reconnecting`, `failed` or `closed`.
 */
export class Client extends Emitter {
  constructor({ url, clientId = null, token = null, authCallback = null, backoff = null } = {}) {
    super();
    this.url = url || defaultUrl();
    this.clientId = clientId;
    this.token = token;
    this.authCallback = authCallback;
    this.backoff = backoff || new Backoff();
    this.state = "connecting";
    this.connected = null; // the latest `connected` message
    this.connectionId = null;
    this.resumed = false;
    this._resumeKey = null;
    this._ws = null;
    this._ref = 0;
    this._pending = new Map(); // ref -> {message, resolve, reject, resend}
    this._channels = new Map();
    this._closed = false;
    this._renewTimer = null;
    this._since = 0;
    this._ready = null;
    this._opened = null;
    this.connectTimeoutMs = 10000;
  }

  /** Connect; resolves on the first `connected` (rejects if it is refused for good). */
  connect() {
    if (!this._opened) {
      this._opened = new Promise((resolve, reject) => {
        this._ready = { resolve, reject };
      });
      this._open();
    }
    return this._opened;
  }

  /** The channel called `name` (always the same object for one name). */
  channel(name) {
    let channel = this._channels.get(name);
    if (!channel) {
      channel = new Channel(this, name);
      this._channels.set(name, channel);
    }
    return channel;
  }

  get isConnected() {
    return this.state === "connected" && this._ws?.readyState === WebSocket.OPEN;
  }

  /**
   * Send a request and resolve with its reply (reject with a RoomcastError on `error`).
   * With `resend` (the default), a request not answered before a drop is sent again after
   * the reconnect: use it for requests that are safe to repeat (publishes carry an `id`).
   */
  request(message, { resend = true } = {}) {
    if (this._closed) return Promise.reject(new RoomcastError(0, "the client is closed"));
    this._ref += 1;
    const ref = this._ref;
    const full = { ...message, ref };
    return new Promise((resolve, reject) => {
      this._pending.set(ref, { message: full, resolve, reject, resend });
      if (this.isConnected) this._send(full);
    });
  }

  /** Send a message that has no reply (`signal`); dropped when not connected. */
  send(message) {
    if (this.isConnected) this._send(message);
  }

  /** Close for good: no reconnect. */
  close() {
    this._closed = true;
    clearTimeout(this._renewTimer);
    this._setState("closed");
    try {
      this._ws?.close(1000, "bye");
    } catch {
      /* already closed */
    }
    for (const entry of this._pending.values()) entry.reject(new RoomcastError(0, "the client is closed"));
    this._pending.clear();
  }

  /** Replace the token on the open connection (the `auth` action). */
  async renew(token) {
    await this.request({ action: "auth", token }, { resend: false });
    this.token = token;
    this._scheduleRenewal();
  }

  // ------------------------------------------------------------------ internals

  _setState(state, extra = {}) {
    this.state = state;
    this.emit("state", { state, resumed: this.resumed, ...extra });
  }

  async _freshToken(force = false) {
    if (!this.authCallback) return;
    const exp = this.token ? tokenExpiry(this.token) : null;
    if (!force && this.token && (exp === null || exp - Date.now() / 1000 > FRESH_FOR_S)) return;
    this.token = await this.authCallback();
  }

  _query() {
    const params = new URLSearchParams();
    if (this.token) params.set("token", this.token);
    else if (this.clientId) params.set("client_id", this.clientId);
    if (this._resumeKey) params.set("resume", this._resumeKey);
    const text = params.toString();
    return text ? `${this.url}?${text}` : this.url;
  }

  async _open(forceToken = false) {
    if (this._closed) return;
    try {
      await this._freshToken(forceToken);
    } catch (error) {
      console.warn("roomcast: auth callback failed", error);
      this._retry();
      return;
    }
    let ws;
    try {
      ws = new WebSocket(this._query());
    } catch (error) {
      this._fail(new RoomcastError(40000, String(error)));
      return;
    }
    this._ws = ws;
    let lastError = null;
    let gotConnected = false;
    // A socket that opens but never says `connected` (a proxy, a stuck server) is retried.
    const timer = setTimeout(() => {
      if (!gotConnected && this._ws === ws) ws.close(4000, "no connected message");
    }, this.connectTimeoutMs);
    ws.onmessage = (frame) => {
      let parsed;
      try {
        parsed = JSON.parse(frame.data);
      } catch {
        return;
      }
      for (const message of Array.isArray(parsed) ? parsed : [parsed]) {
        if (message.action === "connected") {
          gotConnected = true;
          this._onConnected(message);
        } else if (message.action === "error" && message.ref === undefined) {
          lastError = message;
          this.emit("error", message);
        } else {
          this._dispatch(message);
        }
      }
    };
    ws.onclose = (close) => {
      clearTimeout(timer);
      if (this._ws !== ws) return;
      this._ws = null;
      if (this._closed) return;
      const wasUp = gotConnected;
      if (wasUp && Date.now() - this._since >= STABLE_AFTER_MS) this.backoff.reset();
      for (const [ref, entry] of this._pending) {
        if (!entry.resend) {
          this._pending.delete(ref);
          entry.reject(new RoomcastError(0, "the connection dropped"));
        }
      }
      for (const channel of this._channels.values()) channel._linkDown();
      const expired = close.code === CLOSE_AUTH || lastError?.code === 40100;
      if (expired && !this.authCallback) {
        this._fail(new RoomcastError(40100, lastError?.message || close.reason || "unauthorized"));
        return;
      }
      if (TERMINAL_CLOSE_CODES.has(close.code) || (!wasUp && lastError && lastError.code < 50000 && !expired)) {
        this._fail(new RoomcastError(lastError?.code || 40000, lastError?.message || close.reason || `closed ${close.code}`));
        return;
      }
      this._setState("reconnecting", { reason: `${close.code} ${close.reason}`.trim() });
      this._retry(expired);
    };
  }

  _retry(forceToken = false) {
    const delay = this.backoff.nextDelay();
    setTimeout(() => this._open(forceToken), delay);
  }

  _fail(error) {
    this._closed = true;
    this._setState("failed", { reason: error.message });
    this.emit("failed", error);
    this._ready?.reject(error);
    for (const entry of this._pending.values()) entry.reject(error);
    this._pending.clear();
  }

  _onConnected(message) {
    this.connected = message;
    this.clientId = message.client_id;
    this.connectionId = message.connection_id;
    this.resumed = Boolean(message.resumed);
    this._resumeKey = message.resume_key;
    this._since = Date.now();
    this.state = "connected";
    // Re-attach first, then re-send what was never answered, in the original order.
    const unanswered = [...this._pending.values()];
    for (const channel of this._channels.values()) channel._linkUp();
    for (const entry of unanswered) if (this._pending.has(entry.message.ref)) this._send(entry.message);
    this._setState("connected");
    this.emit("connected", message);
    this._scheduleRenewal();
    this._ready?.resolve(message);
    this._ready = null;
  }

  _scheduleRenewal() {
    clearTimeout(this._renewTimer);
    if (!this.authCallback || !this.token) return;
    const exp = tokenExpiry(this.token);
    if (exp === null) return;
    const delay = renewDelay(exp - Date.now() / 1000) * 1000;
    this._renewTimer = setTimeout(async () => {
      if (this._closed || !this.isConnected) return;
      try {
        await this.renew(await this.authCallback());
      } catch (error) {
        console.warn("roomcast: token renewal failed; will reconnect when it expires", error);
      }
    }, delay);
  }

  _send(message) {
    this._ws.send(JSON.stringify(message));
  }

  _dispatch(message) {
    if (message.ref !== undefined && message.ref !== null) {
      const entry = this._pending.get(message.ref);
      if (entry) {
        this._pending.delete(message.ref);
        if (message.action === "error") {
          entry.reject(new RoomcastError(message.code, message.message, message.channel));
        } else {
          entry.resolve(message);
        }
      }
      return;
    }
    const channel = message.channel !== undefined ? this._channels.get(message.channel) : null;
    if (channel) channel._receive(message);
  }
}

/**
 * One channel. Events (`channel.on(name, fn)`):
 * - `attached` (the `attached` message; `resumed: false` means: rebuild from its snapshot),
 * - `event` (each durable event once, in serial order, also those replayed on a resume),
 * - `presence` (the Presence, after any change), `signal` (a `signal` message),
 * - `objects` (the LiveObjects, after any change), `discontinuity`, `error`.
 */
export class Channel extends Emitter {
  constructor(client, name) {
    super();
    this.client = client;
    this.name = name;
    this.state = "initialized";
    this.serial = null; // the last serial delivered
    this.epoch = null;
    this.attached = null;
    this.presence = new Presence(this);
    this.objects = new LiveObjects(this);
    this.polls = new Polls(this);
    this.boards = new Boards(this);
    this._rewind = null;
    this._attachRef = null;
    this._waiters = [];
  }

  /** Attach; resolves with `attached`. `rewind`: include the last N messages. */
  attach({ rewind = null } = {}) {
    if (this.state === "attached" && this.attached) return Promise.resolve(this.attached);
    const promise = new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
    if (rewind !== null) this._rewind = rewind;
    if (this.state !== "attaching") {
      this.state = "attaching";
      this._sendAttach();
    }
    return promise;
  }

  async detach() {
    this.state = "detached";
    this.serial = this.epoch = this.attached = null;
    if (this.client.isConnected) await this.client.request({ action: "detach", channel: this.name }, { resend: false });
  }

  publish(data, { name, extras, streaming, id } = {}) {
    const message = { action: "publish", channel: this.name, data, id: id || newPublishId() };
    if (name) message.name = name;
    if (extras) message.extras = extras;
    if (streaming) message.streaming = true;
    return this.client.request(message).then((ok) => ok.serial);
  }
  append(msgSerial, data) {
    return this._change({ action: "append", msg_serial: msgSerial, data });
  }
  /** `changes`: any of `data`, `extras` (merged; null removes a key), `status`. */
  update(msgSerial, changes) {
    return this._change({ action: "update", msg_serial: msgSerial, ...changes });
  }
  delete(msgSerial) {
    return this._change({ action: "delete", msg_serial: msgSerial });
  }
  cancel(msgSerial, reason) {
    return this._change({ action: "cancel", msg_serial: msgSerial, ...(reason ? { reason } : {}) });
  }
  react(msgSerial, name, { remove = false } = {}) {
    return this._change({ action: "annotate", msg_serial: msgSerial, kind: "reaction", name, op: remove ? "remove" : "add" });
  }
  /** An ephemeral signal (typing...): never stored, not answered. */
  signal(name, data = null) {
    this.client.send({ action: "signal", channel: this.name, name, data });
  }
  /** One page of history: `{messages, has_more}`, oldest first. */
  async history({ before, after, limit = 50 } = {}) {
    const message = { action: "history", channel: this.name, limit };
    if (before !== undefined && before !== null) message.before = before;
    if (after !== undefined && after !== null) message.after = after;
    const reply = await this.client.request(message);
    return { messages: reply.messages || [], has_more: Boolean(reply.has_more) };
  }
  async _change(message) {
    const ok = await this.client.request({ ...message, channel: this.name });
    return typeof ok.serial === "number" ? ok.serial : null;
  }

  _sendAttach() {
    if (!this.client.isConnected) return; // sent by _linkUp
    const message = { action: "attach", channel: this.name };
    if (this.serial !== null) {
      message.from_serial = this.serial;
      if (this.epoch) message.epoch = this.epoch;
    }
    if (this._rewind !== null) message.rewind = this._rewind;
    const promise = this.client.request(message, { resend: false });
    const ref = this.client._ref;
    this._attachRef = ref;
    promise.then(
      (reply) => this._onAttached(ref, reply),
      (error) => {
        if (ref !== this._attachRef || error.code === 0) return; // dropped: re-sent on reconnect
        this.state = "failed";
        for (const waiter of this._waiters.splice(0)) waiter.reject(error);
        this.emit("error", error);
      },
    );
  }

  _onAttached(ref, reply) {
    if (ref !== this._attachRef) return;
    this._attachRef = null;
    const resumed = Boolean(reply.resumed) && this.serial !== null;
    if (!resumed) this.serial = reply.serial;
    this.epoch = reply.epoch;
    this.attached = reply;
    this.state = "attached";
    this.presence._onAttached(reply.presence || []);
    this.objects._onAttached(reply, resumed);
    this.emit("attached", { ...reply, resumed });
    for (const waiter of this._waiters.splice(0)) waiter.resolve(reply);
  }

  _linkUp() {
    if (this.state === "attached" || this.state === "attaching") {
      this.state = "attaching";
      this._sendAttach();
    }
  }
  _linkDown() {
    this._attachRef = null;
    if (this.state === "attached") this.state = "attaching";
  }

  _receive(message) {
    if (this.state !== "attached" && this.state !== "attaching") return;
    switch (message.action) {
      case "event":
        if (this.serial !== null && message.serial <= this.serial) return; // replay overlap
        this.serial = message.serial;
        this.objects._onEvent(message);
        this.emit("event", message);
        break;
      case "presence":
        this.presence._onEvent(message);
        break;
      case "signal":
        this.emit("signal", message);
        break;
      case "discontinuity":
        this.emit("discontinuity", message);
        break;
      default:
        break;
    }
  }
}

/** Who is here: members keyed by (client_id, connection_id); entered again after a reconnect. */
export class Presence {
  constructor(channel) {
    this.channel = channel;
    this.members = new Map(); // "client_id connection_id" -> member
    this._entered = false;
    this._data = null;
  }
  /** Enter with `data` (entered again by itself if a reconnect loses the membership). */
  enter(data = null) {
    return this._op("enter", data);
  }
  update(data = null) {
    return this._op("update", data);
  }
  leave() {
    return this._op("leave", null);
  }
  /** The members as a list, in the order they were seen. */
  list() {
    return [...this.members.values()];
  }
  async _op(op, data) {
    this._entered = op !== "leave";
    this._data = data;
    await this.channel.client.request({ action: "presence", channel: this.channel.name, op, data });
  }
  _onAttached(members) {
    this.members = new Map(members.map((m) => [`${m.client_id} ${m.connection_id}`, m]));
    const client = this.channel.client;
    if (this._entered && !this.members.has(`${client.clientId} ${client.connectionId}`)) {
      this._op("enter", this._data).catch((error) => console.warn("roomcast: could not enter again", error));
    }
    this.channel.emit("presence", this);
  }
  _onEvent(message) {
    const key = `${message.client_id} ${message.connection_id}`;
    if (message.op === "leave") this.members.delete(key);
    else this.members.set(key, { client_id: message.client_id, connection_id: message.connection_id, data: message.data, timestamp: message.timestamp });
    this.channel.emit("presence", this, message);
  }
}

// ---------------------------------------------------------------------- live objects

function isReference(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length === 1 && typeof value.object_id === "string";
}

/**
 * A channel's live objects (PROTOCOL.md §5): the `attached` snapshot, then each `object`
 * event applied in serial order with the server's rules. `state` maps object_id to
 * `{type: "map", entries}` or `{type: "counter", value}`.
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

/** What polls and boards share: objects listed in a map of references under `root`. */
class Convention {
  constructor(channel, key) {
    this.channel = channel;
    this.key = key;
  }
  get objects() {
    return this.channel.objects;
  }
  /** Every object of `root[key]` that `get` recognises, in creation order. */
  list() {
    const objects = this.objects;
    const index = objects.ref(objects.entries("root")?.[this.key]);
    const ids = index ? Object.keys(objects.entries(index) || {}) : [];
    return ids
      .filter((id) => this.get(id))
      .sort((a, b) => serialOf(a) - serialOf(b))
      .map((id) => this.get(id));
  }
}

/** Polls, per PROTOCOL.md §5: the same shapes as the Python SDK and the agents' tools.
 * `list()` gives every poll of `root.polls`, oldest first:
 * {poll_id, question, options, votes, counts, closed, created_by}. */
export class Polls extends Convention {
  constructor(channel) {
    super(channel, "polls");
  }
  get(pollId) {
    const objects = this.objects;
    const poll = objects.entries(pollId);
    if (!poll || poll.kind !== "poll") return null;
    const options = objects.entries(objects.ref(poll.options)) || {};
    const votes = objects.entries(objects.ref(poll.votes)) || {};
    const counts = Object.fromEntries(Object.keys(options).map((id) => [id, 0]));
    for (const choice of Object.values(votes)) if (choice in counts) counts[choice] += 1;
    return {
      poll_id: pollId,
      question: String(poll.question ?? ""),
      options: Object.fromEntries(Object.entries(options).map(([k, v]) => [k, String(v)])),
      votes,
      counts,
      closed: Boolean(poll.closed),
      created_by: typeof poll.created_by === "string" ? poll.created_by : null,
    };
  }
  async create(question, labels) {
    const clean = labels.map((label) => label.trim()).filter(Boolean);
    if (!question.trim() || clean.length < 2) throw new RoomcastError(40000, "a poll needs a question and at least 2 options");
    const objects = this.objects;
    const options = await objects.createMap(Object.fromEntries(clean.map((label, i) => [`opt-${i + 1}`, label])));
    const votes = await objects.createMap({});
    const poll = await objects.createMap({
      kind: "poll",
      question: question.trim(),
      options: { object_id: options },
      votes: { object_id: votes },
      closed: false,
      created_by: this.channel.client.clientId,
    });
    const index = await objects.index("polls");
    await objects.set(index, poll, { object_id: poll });
    return poll;
  }
  async vote(pollId, optionId) {
    const poll = this.objects.entries(pollId);
    if (!poll) throw new RoomcastError(40400, `no poll ${pollId}`);
    if (poll.closed) throw new RoomcastError(40900, `poll ${pollId} is closed`);
    await this.objects.set(this.objects.ref(poll.votes), this.channel.client.clientId, optionId);
  }
  async unvote(pollId) {
    const poll = this.objects.entries(pollId);
    if (poll) await this.objects.remove(this.objects.ref(poll.votes), this.channel.client.clientId);
  }
  close(pollId) {
    return this.objects.set(pollId, "closed", true);
  }
}

/** Boards (notes, lists, plans), per PROTOCOL.md §5. `list()` gives every board of
 * `root.boards`: {board_id, title, items: [{item_id, text, author, ts, done}]}. */
export class Boards extends Convention {
  constructor(channel) {
    super(channel, "boards");
  }
  get(boardId) {
    const objects = this.objects;
    const board = objects.entries(boardId);
    if (!board || board.kind !== "board") return null;
    const items = objects.entries(objects.ref(board.items)) || {};
    return {
      board_id: boardId,
      title: String(board.title ?? ""),
      items: Object.keys(items)
        .sort()
        .map((id) => ({ item_id: id, ...(typeof items[id] === "object" && items[id] ? items[id] : { text: String(items[id]) }) })),
    };
  }
  async create(title) {
    if (!title.trim()) throw new RoomcastError(40000, "a board needs a title");
    const objects = this.objects;
    const items = await objects.createMap({});
    const board = await objects.createMap({ kind: "board", title: title.trim(), items: { object_id: items } });
    const index = await objects.index("boards");
    await objects.set(index, board, { object_id: board });
    return board;
  }
  async addItem(boardId, text) {
    if (!text.trim()) throw new RoomcastError(40000, "an item needs text");
    const hex = [...crypto.getRandomValues(new Uint8Array(3))].map((b) => b.toString(16).padStart(2, "0")).join("");
    const itemId = `${String(Date.now()).padStart(13, "0")}-${hex}`;
    const item = { text: text.trim(), author: this.channel.client.clientId, ts: Date.now(), done: false };
    await this.objects.set(this._items(boardId), itemId, item);
    return itemId;
  }
  async setDone(boardId, itemId, done = true) {
    const items = this._items(boardId);
    const current = this.objects.entries(items)?.[itemId];
    if (!current) throw new RoomcastError(40400, `no item ${itemId}`);
    await this.objects.set(items, itemId, { ...current, done });
  }
  removeItem(boardId, itemId) {
    return this.objects.remove(this._items(boardId), itemId);
  }
  _items(boardId) {
    const board = this.objects.entries(boardId);
    const items = board ? this.objects.ref(board.items) : null;
    if (!items) throw new RoomcastError(40400, `no board ${boardId}`);
    return items;
  }
}

function serialOf(objectId) {
  const tail = String(objectId).split("-").pop();
  return /^\d+$/.test(tail) ? Number(tail) : 0;
}

// ---------------------------------------------------------------------- messages

/**
 * A message list kept current from `attached` and events (PROTOCOL.md §3): apply each event
 * with `apply(event)`; `get(msgSerial)`; `list()` oldest first. Returns the changed message.
 */
export class MessageStore {
  constructor() {
    this.messages = new Map();
  }
  reset(messages = []) {
    this.messages = new Map();
    for (const message of messages) this.put(message);
  }
  put(message) {
    const copy = { reactions: {}, extras: null, deleted: false, cancelled_by: null, ...message };
    this.messages.set(copy.msg_serial, copy);
    return copy;
  }
  get(msgSerial) {
    return this.messages.get(msgSerial) || null;
  }
  list() {
    return [...this.messages.values()].sort((a, b) => a.msg_serial - b.msg_serial);
  }
  apply(event) {
    if (event.type === "create") {
      return this.put({
        msg_serial: event.serial,
        id: event.id ?? null,
        client_id: event.client_id,
        name: event.name ?? "text",
        data: event.data,
        extras: event.extras ?? null,
        timestamp: event.timestamp,
        updated_at: null,
        status: event.streaming ? "streaming" : "complete",
      });
    }
    const message = this.messages.get(event.msg_serial);
    if (!message || event.type === "object") return null;
    switch (event.type) {
      case "append":
        message.data = (typeof message.data === "string" ? message.data : "") + event.data;
        break;
      case "update":
        if ("data" in event) message.data = event.data;
        if (event.extras) {
          const extras = { ...(message.extras || {}) };
          for (const [key, value] of Object.entries(event.extras)) {
            if (value === null) delete extras[key];
            else extras[key] = value;
          }
          message.extras = extras;
        }
        if (event.status) message.status = event.status;
        message.updated_at = event.timestamp;
        break;
      case "delete":
        message.data = null;
        message.deleted = true;
        break;
      case "annotation": {
        const who = message.reactions[event.name] || [];
        if (event.op === "add" && !who.includes(event.client_id)) message.reactions[event.name] = [...who, event.client_id];
        if (event.op === "remove") {
          const left = who.filter((id) => id !== event.client_id);
          if (left.length) message.reactions[event.name] = left;
          else delete message.reactions[event.name];
        }
        break;
      }
      case "cancel":
        message.cancelled_by = event.client_id;
        break;
      default:
        return null;
    }
    return message;
  }
}
