// The connection: one WebSocket at a time, reconnected and resumed, with the requests
// not yet answered and the channels to attach again.

import { Backoff } from "./backoff.js";
import { Capability } from "./capability.js";
import { Channel } from "./channel.js";
import { Emitter } from "./emitter.js";
import { RoomcastError } from "./errors.js";
import { HttpApi, httpBaseOf } from "./http.js";
import { renewDelay, tokenCapability, tokenExpiry } from "./tokens.js";

export const CLOSE_AUTH = 4001;
// Close codes after which reconnecting cannot help (bad credentials, frames refused).
const TERMINAL_CLOSE_CODES = new Set([1002, 1003, 1007, 1008]);
const STABLE_AFTER_MS = 1000;
const FRESH_FOR_S = 5;
const OPEN = 1; // WebSocket.OPEN, the same in every implementation

function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/v1/ws`;
}

/**
 * A connection to a roomcast server that reconnects and resumes by itself.
 *
 * Options: `url` (default: this page's server, `/v1/ws`), `clientId` (anonymous access),
 * `token` (a signed token), `authCallback` (an async function returning a fresh token: used
 * at connect, before expiry and after a 4001), `backoff`, `httpUrl` (where `client.http`
 * sends its calls; default: the server of `url`), `WebSocket` (the WebSocket class to use;
 * default: the global one; e.g. the `ws` package's on a Node.js without one).
 *
 * Events (`client.on(name, fn)`): `state` ({state, resumed, reason}), `connected`
 * (the `connected` message), `capability` (a renewed token changed `client.capability`),
 * `error` (an `error` with no ref), `failed` (a RoomcastError).
 * `state` is `connecting`, `connected`, `reconnecting`, `failed` or `closed`.
 */
export class Client extends Emitter {
  constructor({ url, clientId = null, token = null, authCallback = null, backoff = null, httpUrl = null, WebSocket: socketClass = null } = {}) {
    super();
    this.url = url || defaultUrl();
    this.WebSocket = socketClass || globalThis.WebSocket;
    /** The HTTP API, with this client's credentials. */
    this.http = new HttpApi(this, httpUrl || httpBaseOf(this.url));
    this.clientId = clientId;
    this.token = token;
    this.authCallback = authCallback;
    this.backoff = backoff || new Backoff();
    this.state = "connecting";
    this.connected = null; // the latest `connected` message
    this.capability = null; // what the connection may do: a Capability, null if not told
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

  /** Whether the connection may do `operation` on `channel` (docs/protocol.md §6); true
   * when the server did not say (one older than `connected.capability`): it decides. */
  can(operation, channel) {
    return this.capability === null || this.capability.allows(operation, channel);
  }

  get isConnected() {
    return this.state === "connected" && this._ws?.readyState === OPEN;
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
    const granted = tokenCapability(token);
    if (granted) this._setCapability(granted);
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
    const WebSocket = this.WebSocket; // the global one unless the options gave another
    try {
      ws = new WebSocket(this._query());
    } catch (error) {
      this._fail(new RoomcastError(40000, String(error)));
      return;
    }
    this._ws = ws;
    // What this socket has said so far: whether it got to `connected`, its last error.
    const socket = { ws, gotConnected: false, lastError: null, timer: null };
    // A socket that opens but never says `connected` (a proxy, a stuck server) is retried.
    socket.timer = setTimeout(() => {
      if (!socket.gotConnected && this._ws === ws) ws.close(4000, "no connected message");
    }, this.connectTimeoutMs);
    ws.onmessage = (frame) => this._onFrame(socket, frame);
    ws.onclose = (close) => this._onClose(socket, close);
  }

  _onFrame(socket, frame) {
    let parsed;
    try {
      parsed = JSON.parse(frame.data);
    } catch {
      return;
    }
    for (const message of Array.isArray(parsed) ? parsed : [parsed]) {
      if (message.action === "connected") {
        socket.gotConnected = true;
        this._onConnected(message);
      } else if (message.action === "error" && message.ref === undefined) {
        socket.lastError = message;
        this.emit("error", message);
      } else {
        this._dispatch(message);
      }
    }
  }

  _onClose(socket, close) {
    clearTimeout(socket.timer);
    if (this._ws !== socket.ws) return;
    this._ws = null;
    if (this._closed) return;
    const { gotConnected: wasUp, lastError } = socket;
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

  /** The server now applies `rules`; `capability` tells who shows what it allows. */
  _setCapability(rules) {
    this.capability = rules ? new Capability(rules) : null;
    this.emit("capability", this.capability);
  }

  _onConnected(message) {
    this.connected = message;
    this.capability = message.capability ? new Capability(message.capability) : null;
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
