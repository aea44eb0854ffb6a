// Polls and boards: conventions over a channel's live objects, shared with the Python SDK
// and the agents' tools.

import { RoomcastError } from "./errors.js";

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

/** Polls, per docs/protocol.md §5: the same shapes as the Python SDK and the agents'
 * tools. `list()` gives every poll of `root.polls`, oldest first:
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

/** Boards (notes, lists, plans), per docs/protocol.md §5. `list()` gives every board of
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
