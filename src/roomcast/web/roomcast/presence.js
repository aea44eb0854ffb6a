// A channel's presence: who is here, kept current, and our own membership kept.

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
