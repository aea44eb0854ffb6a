// One channel: attach and re-attach from its position, publish and change messages,
// history, signals; its presence and live objects hang off it.

import { Boards, Polls } from "./conventions.js";
import { Emitter } from "./emitter.js";
import { LiveObjects } from "./objects.js";
import { Presence } from "./presence.js";

let publishCounter = 0;
/** An idempotency key for a publish, so that re-sending it after a reconnect is safe. */
export function newPublishId() {
  const random = crypto.getRandomValues(new Uint32Array(2));
  publishCounter += 1;
  return `rc-${Date.now().toString(36)}-${random[0].toString(36)}${random[1].toString(36)}-${publishCounter}`;
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
    this.types = null; // the event types asked for; null: all
    this._attachRef = null;
    this._waiters = [];
    // What arrives while an attach is pending waits for its reply: the reply settles a
    // promise (a microtask), while the events the server sent after it in the same frame
    // are dispatched at once. Handled first, they would be applied before the snapshot
    // they follow, and then lost to it.
    this._held = [];
  }

  /** Attach; resolves with `attached`. `rewind`: include the last N messages. `types`:
   * only these event types, live and replayed (kept for every re-attach). */
  attach({ rewind = null, types = null } = {}) {
    if (this.state === "attached" && this.attached) return Promise.resolve(this.attached);
    const promise = new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
    if (rewind !== null) this._rewind = rewind;
    if (types !== null) this.types = [...types];
    if (this.state !== "attaching") {
      this.state = "attaching";
      this._sendAttach();
    }
    return promise;
  }

  async detach() {
    this.state = "detached";
    this._attachRef = null;
    this._held = [];
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
    if (this.types !== null) message.types = this.types;
    const promise = this.client.request(message, { resend: false });
    const ref = this.client._ref;
    this._attachRef = ref;
    promise.then(
      (reply) => this._onAttached(ref, reply),
      (error) => {
        if (ref !== this._attachRef || error.code === 0) return; // dropped: re-sent on reconnect
        this._attachRef = null;
        this._held = [];
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
    for (const message of this._held.splice(0)) this._receive(message);
  }

  _linkUp() {
    if (this.state === "attached" || this.state === "attaching") {
      this.state = "attaching";
      this._sendAttach();
    }
  }
  _linkDown() {
    this._attachRef = null;
    this._held = []; // the connection's; a resume replays its events
    if (this.state === "attached") this.state = "attaching";
  }

  _receive(message) {
    if (this.state !== "attached" && this.state !== "attaching") return;
    if (this._attachRef !== null) {
      this._held.push(message);
      return;
    }
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
