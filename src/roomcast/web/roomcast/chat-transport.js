// RoomcastChatTransport: the AI SDK's ChatTransport (`useChat({ transport })`) over the
// WebSocket protocol, with the whole room live (docs/ai-sdk.md, "The WebSocket transport").
//
// A chat id names the room `room:<id>`. The transport attaches each room it is asked about
// (with the last messages) and keeps its messages current, so:
// - `sendMessages` publishes the last user message (text parts joined, its id as the
//   idempotency key) with `extras.awaits` (the agents that answer it, by the rule the server
//   and the agents follow: answering.js) and streams the chunks of the answers to it,
//   ending as the HTTP route does (replies.js);
// - `reconnectToStream` streams the answer streaming in the room from its beginning, then
//   live (null when none streams);
// - `stop` cancels the streaming answers with the cancel rules; aborting a stream never does;
// - `onMessages` calls back with the room's messages as UIMessages whenever they change.
// Regenerating goes through the HTTP route: only the server may ask agents again.

import { AWAITS, awaits, expectedAgents, roomAgents } from "./answering.js";
import { RoomcastError } from "./errors.js";
import { Client } from "./link.js";
import { MessageStore } from "./messages.js";
import { ReplyChunks, answerKey, parseReplyId, uiMessages } from "./replies.js";

const ROOM_PREFIX = "room:";
// `.` and `..` alone are refused: a browser's URL rules make `/chat/../stream` another path.
const CHAT_ID = /^(?!\.\.?$)[A-Za-z0-9_.-]{1,195}$/;
const RECENT = 100; // messages read on attach, and searched for the answer that streams
const ANSWER_START_TIMEOUT_S = 120; // the server's safety net for an agent that shows nothing

/** The room of a chat id (`room:<id>`); a RoomcastError for an id that cannot name one. */
export function roomOf(chatId) {
  if (typeof chatId !== "string" || !CHAT_ID.test(chatId)) {
    throw new RoomcastError(40000, `chat id ${JSON.stringify(String(chatId).slice(0, 80))} cannot name a room: use 1 to 195 letters, digits, \`_\`, \`.\` or \`-\`, not \`.\` or \`..\` alone`);
  }
  return ROOM_PREFIX + chatId;
}

function abortError(signal) {
  return signal.reason instanceof Error ? signal.reason : new DOMException("The operation was aborted.", "AbortError");
}

function userText(message) {
  return message.parts
    .filter((part) => part.type === "text" && typeof part.text === "string")
    .map((part) => part.text)
    .join("\n");
}

function refuseFiles(messages) {
  if (messages.some((message) => (message.parts || []).some((part) => part.type === "file"))) {
    throw new RoomcastError(40000, "file parts are not supported yet: send text parts");
  }
}

/** The answers a stop is limited to (`[msgSerial, again]`; null: all). An id that names no
 * assistant message is refused, never read as "all". */
function stopOnly(messageId) {
  if (messageId === undefined || messageId === null) return null;
  const only = parseReplyId(messageId);
  if (only === null) {
    throw new RoomcastError(40000, `\`messageId\` ${JSON.stringify(String(messageId).slice(0, 80))} names no assistant message of a chat: use \`reply-<msg_serial>\` or \`reply-<msg_serial>-<id>\`, or leave it out to stop every answer you may stop`);
  }
  return only;
}

/** One room as the transport sees it: attached with its last messages, kept current. */
class ChatRoom {
  constructor(client, chatId) {
    this.chatId = chatId;
    this.channel = client.channel(roomOf(chatId));
    this.store = new MessageStore();
    this.watchers = new Set();
    this.scheduled = false;
    this.opened = null;
    this.off = [];
  }

  open() {
    if (!this.opened) {
      if (this.channel.state === "attached" || this.channel.state === "attaching") {
        const error = new RoomcastError(40000, `${this.channel.name} is attached already: the transport must attach it itself (give it a client of its own)`);
        this.opened = Promise.reject(error);
        return this.opened;
      }
      this.off.push(
        this.channel.on("attached", (attached) => {
          if (!attached.resumed) this.store.reset(attached.messages || []);
          this.changed();
        }),
        this.channel.on("event", (event) => {
          if (this.store.apply(event)) this.changed();
        }),
      );
      this.opened = this.channel.client
        .connect()
        .then(() => this.channel.attach({ rewind: RECENT }))
        .catch((error) => {
          for (const off of this.off.splice(0)) off();
          this.opened = null; // the next call tries again
          throw error;
        });
    }
    return this.opened;
  }

  get messages() {
    return uiMessages(this.channel.name, this.store.list());
  }

  /** Call `callback(messages)` now (once open) and after each change; returns the unsubscribe. */
  watch(callback) {
    this.watchers.add(callback);
    if (this.channel.state === "attached") this.changed();
    return () => this.watchers.delete(callback);
  }

  changed() {
    if (this.scheduled || this.watchers.size === 0) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      const messages = this.messages;
      for (const callback of [...this.watchers]) callback(messages);
    });
  }

  /** The latest answer streaming in the room (`[msgSerial, again]`), or null. */
  streamingKey() {
    for (const message of this.store.list().slice(-RECENT).reverse()) {
      const key = answerKey(message);
      if (key !== null && message.status === "streaming" && (message.name ?? "text") === "text") return key;
    }
    return null;
  }

  async message(msgSerial) {
    const found = this.store.get(msgSerial);
    if (found) return found;
    const page = await this.channel.history({ after: msgSerial - 1, limit: 1 });
    return page.messages.find((m) => m.msg_serial === msgSerial) ?? null;
  }

  close() {
    for (const off of this.off.splice(0)) off();
    this.watchers.clear();
    if (this.opened) this.channel.detach().catch(() => {}); // gone with the connection
  }
}

/**
 * The chunks of `chunks`' reply as a ReadableStream: the answers as they stand in the room,
 * then live, until the reply is done. Aborting `signal` (or cancelling the stream) stops
 * reading; the answers go on.
 */
function replyStream(room, chunks, signal) {
  const cleanup = [];
  let closed = false;
  const stop = () => {
    closed = true;
    for (const fn of cleanup.splice(0)) fn();
  };
  return new ReadableStream({
    start(controller) {
      const push = (out) => {
        if (closed) return;
        for (const chunk of out) controller.enqueue(chunk);
        if (chunks.done) {
          for (const chunk of chunks.finish()) controller.enqueue(chunk);
          stop();
          controller.close();
        }
      };
      const giveUp = (why) => {
        chunks.giveUp(why);
        push([]);
      };
      const client = room.channel.client;
      const out = [chunks.start()];
      for (const message of room.store.list()) {
        if (message.msg_serial > chunks.msgSerial) out.push(...chunks.feedMessage(structuredClone(message)));
      }
      const timer = setTimeout(() => {
        const names = [...chunks.waiting].sort().join(", ");
        if (names) giveUp(`${names} did not answer within ${ANSWER_START_TIMEOUT_S} s`);
      }, ANSWER_START_TIMEOUT_S * 1000);
      const onAbort = () => {
        stop();
        controller.error(abortError(signal));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      cleanup.push(
        () => clearTimeout(timer),
        () => signal?.removeEventListener("abort", onAbort),
        room.channel.on("event", (event) => push(chunks.feed(event))),
        room.channel.on("discontinuity", (message) => giveUp(`the room's log cannot be followed: ${message.reason}`)),
        client.on("failed", (error) => {
          if (closed) return;
          controller.enqueue({ type: "error", errorText: error.message });
          stop();
          controller.close();
        }),
      );
      push(out);
    },
    cancel() {
      stop();
    },
  });
}

/** The chunks of a UI message stream response (Server-Sent Events, `data: <chunk JSON>`). */
function sseChunks() {
  let buffer = "";
  const emit = (block, controller) => {
    const data = block
      .split(/\r?\n/)
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).replace(/^ /, ""))
      .join("\n");
    if (data && data !== "[DONE]") controller.enqueue(JSON.parse(data));
  };
  return new TransformStream({
    transform(text, controller) {
      buffer += text;
      const blocks = buffer.split(/\r?\n\r?\n/);
      buffer = blocks.pop();
      for (const block of blocks) emit(block, controller);
    },
    flush(controller) {
      if (buffer.trim()) emit(buffer, controller);
    },
  });
}

/**
 * The AI SDK's `ChatTransport` over a roomcast connection (docs/ai-sdk.md).
 *
 * Options: `client` (a roomcast Client; the transport attaches the rooms itself, so the client
 * must not have attached them), or the options of a Client of its own (`url`, `token`,
 * `authCallback`, `clientId`, `WebSocket`, `httpUrl`, `backoff`).
 */
export class RoomcastChatTransport {
  constructor({ client = null, ...clientOptions } = {}) {
    this._client = client;
    this.clientOptions = client ? null : clientOptions;
    this.rooms = new Map();
    this.agentList = null;
    /** A reconnect gives the reply from its beginning: the AI SDK starts the message anew. */
    this.resumeStreamIsReplay = true;
  }

  /** The roomcast Client (the transport's own is made again after `close`). */
  get client() {
    if (!this._client) this._client = new Client(this.clientOptions);
    return this._client;
  }

  chatRoom(chatId) {
    let room = this.rooms.get(chatId);
    if (!room) {
      room = new ChatRoom(this.client, chatId);
      this.rooms.set(chatId, room);
    }
    return room;
  }

  /** The room of `chatId`, attached (with its last messages) and kept current. */
  async room(chatId) {
    const room = this.chatRoom(chatId);
    await room.open();
    return room;
  }

  /** The server's agents (`GET /v1/agents`), read once. */
  agents() {
    if (!this.agentList) {
      this.agentList = this.client.http.agents();
      this.agentList.catch(() => {
        this.agentList = null;
      });
    }
    return this.agentList;
  }

  /** Publish the last user message to `room:<chatId>` and stream the answers it triggers. */
  async sendMessages({ chatId, messages, abortSignal, trigger = "submit-message", messageId, headers }) {
    if (abortSignal?.aborted) throw abortError(abortSignal);
    refuseFiles(messages);
    const room = await this.room(chatId);
    if (trigger === "regenerate-message") return this.regenerate({ chatId, messages, messageId, abortSignal, headers });
    const channel = room.channel;
    const last = messages.at(-1);
    const text = last?.role === "user" ? userText(last) : "";
    if (!text.trim()) return replyStream(room, new ReplyChunks(channel.name, 0, null, []), abortSignal);
    const draft = { client_id: this.client.clientId, name: "text", data: text, extras: {}, status: "complete", deleted: false };
    const expected = expectedAgents(await this.agents(), channel.name, draft, roomAgents(channel.objects));
    const serial = await channel.publish(text, { id: last.id || undefined, extras: expected.length ? { [AWAITS]: expected } : undefined });
    if (abortSignal?.aborted) throw abortError(abortSignal);
    return replyStream(room, new ReplyChunks(channel.name, serial, null, expected), abortSignal);
  }

  /** The answer streaming in `room:<chatId>`, from its beginning, then live; null if none. */
  async reconnectToStream({ chatId, abortSignal }) {
    const room = await this.room(chatId);
    const key = room.streamingKey();
    if (key === null) return null;
    const [msgSerial, again] = key;
    const trigger = again === null ? await room.message(msgSerial) : null;
    const expected = trigger ? awaits(trigger) : [];
    return replyStream(room, new ReplyChunks(room.channel.name, msgSerial, again, expected), abortSignal);
  }

  /**
   * Cancel the answers streaming in `room:<chatId>` that this client may cancel (`cancel-own`:
   * the answers to its messages; `cancel-any`: all), or only those of the assistant message
   * `messageId` (a RoomcastError 40000 for an id that names none). Resolves with
   * `{cancelled: [msg_serial, ...]}`; rejects with the 40300 error when answers stream and
   * it may cancel none of them.
   */
  async stop(chatId, { messageId } = {}) {
    const only = stopOnly(messageId);
    const room = await this.room(chatId);
    const streaming = room.store
      .list()
      .slice(-RECENT)
      .filter((message) => {
        const key = answerKey(message);
        return message.status === "streaming" && key !== null && (only === null || (key[0] === only[0] && key[1] === only[1]));
      });
    const cancelled = [];
    let refused = null;
    for (const message of streaming) {
      try {
        await room.channel.cancel(message.msg_serial);
        cancelled.push(message.msg_serial);
      } catch (error) {
        if (error.code === 40300) refused = error;
        else if (error.code !== 40900) throw error; // 40900: it ended meanwhile
      }
    }
    if (refused !== null && cancelled.length === 0) throw refused;
    return { cancelled };
  }

  /**
   * Call `callback(messages)` with the room's messages as UIMessages (as
   * `GET /v1/ai-sdk/chat/{id}/messages` gives them) once the room is open, then whenever one
   * changes: everyone's messages and answers, live. Returns a function that stops it.
   * `onError` is called if the room cannot be opened.
   */
  onMessages(chatId, callback, onError = (error) => console.error("roomcast: cannot open the chat", error)) {
    const room = this.chatRoom(chatId);
    const off = room.watch(callback);
    room.open().catch(onError);
    return off;
  }

  /** Ask the agents that wrote `messageId` to answer again: the HTTP route, whose stream
   * this returns (only the server may send the `agent.regenerate` signal). */
  async regenerate({ chatId, messages, messageId, abortSignal, headers }) {
    const http = this.client.http;
    const response = await fetch(`${http.baseUrl}/v1/ai-sdk/chat`, {
      method: "POST",
      headers: { ...Object.fromEntries(new Headers(headers ?? {})), ...http.headers(), "Content-Type": "application/json" },
      body: JSON.stringify({ id: chatId, messages: messages.filter((m) => m.role === "user").slice(-1), trigger: "regenerate-message", messageId }),
      signal: abortSignal,
    });
    if (!response.ok) {
      const error = (await response.json().catch(() => null))?.error || {};
      throw new RoomcastError(error.code ?? response.status * 100, error.message || `HTTP ${response.status}`, null, response.status);
    }
    return response.body.pipeThrough(new TextDecoderStream()).pipeThrough(sseChunks());
  }

  /** Stop following the rooms, and close the client if the transport made it (a later
   * call makes a new one: `useChat` may close a transport it uses again). */
  close() {
    for (const room of this.rooms.values()) room.close();
    this.rooms.clear();
    this.agentList = null;
    if (this.clientOptions && this._client) {
      this._client.close();
      this._client = null;
    }
  }
}
