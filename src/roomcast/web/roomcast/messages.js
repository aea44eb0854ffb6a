// A message list built from a channel's snapshot and events.

/**
 * A message list kept current from `attached` and events (docs/protocol.md §3): apply
 * each event with `apply(event)`; `get(msgSerial)`; `list()` oldest first. Returns the
 * changed message.
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
