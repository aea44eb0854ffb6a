// The AI SDK's UI message stream made from a room's messages: the mapping of
// roomcast/server/ai_sdk_chunks.py (docs/ai-sdk.md, "The chunks"), so the chat transport
// streams and lists exactly what the HTTP routes do. tests/ecosystem checks they agree.
//
// One reply is one assistant UIMessage, id `reply-<msg_serial of the message>` (or
// `reply-<msg_serial>-<id>` for the answers to an `agent.regenerate`). Each agent answer in
// it is a `data-author` part (id: the answer's msg_serial) followed by a text part; each
// tool message is a `dynamic-tool` part.

import { REGENERATE_KEY, SILENT, agentInfo, messageText, replyTo } from "./answering.js";

export const FINAL_STATUSES = new Set(["complete", "cancelled", "failed"]);
const REPLY_ID = /^reply-([0-9]{1,16})(?:-([0-9a-f]{1,32}))?$/;

/** The UIMessage id of the answers to `msgSerial` (asked `again`: its id). */
export function replyId(msgSerial, again) {
  return again === null || again === undefined ? `reply-${msgSerial}` : `reply-${msgSerial}-${again}`;
}

/** `[msgSerial, again]` of an id made by `replyId`, else null. */
export function parseReplyId(messageId) {
  const match = REPLY_ID.exec(String(messageId));
  return match ? [Number(match[1]), match[2] ?? null] : null;
}

/** `[reply_to, regenerate]` of an agent's answer, tool call or silence; else null. */
export function answerKey(message) {
  const target = replyTo(message);
  if (target === null || agentInfo(message) === null) return null;
  const again = message.extras?.[REGENERATE_KEY];
  return [target, typeof again === "string" ? again : null];
}

function sameKey(a, b) {
  return a !== null && b !== null && a[0] === b[0] && a[1] === b[1];
}

/** The state of the message a `create` event makes. */
export function messageFromCreate(event) {
  return {
    msg_serial: event.serial,
    id: event.id ?? null,
    client_id: event.client_id ?? null,
    name: event.name ?? "text",
    data: event.data ?? null,
    extras: { ...(event.extras || {}) },
    timestamp: event.timestamp,
    updated_at: event.timestamp,
    status: event.streaming === true ? "streaming" : "complete",
    deleted: false,
    cancelled_by: null,
  };
}

/** The state of `message` after `event` (a copy; `message` is left as it is). */
export function applyEvent(message, event) {
  const out = { ...message, updated_at: event.timestamp };
  if (event.type === "append") {
    out.data = (message.data || "") + (typeof event.data === "string" ? event.data : "");
  } else if (event.type === "update") {
    if ("data" in event) out.data = event.data;
    if (event.extras) {
      out.extras = { ...(message.extras || {}) };
      for (const [key, value] of Object.entries(event.extras)) {
        if (value === null) delete out.extras[key];
        else out.extras[key] = value;
      }
    }
    if (event.status && !FINAL_STATUSES.has(message.status)) out.status = event.status;
  } else if (event.type === "delete") {
    out.data = null;
    out.deleted = true;
  } else if (event.type === "cancel") {
    out.cancelled_by = event.client_id;
  }
  return out;
}

function replyMetadata(channel, msgSerial, again) {
  const metadata = { room: channel, reply_to: msgSerial };
  if (again !== null) metadata.regenerate = again;
  return metadata;
}

/** The `data-author` data of an answer: who speaks, and how the answer stands. */
export function author(message) {
  const info = agentInfo(message) || {};
  const data = {
    name: "name" in info ? info.name : message.client_id,
    provider: info.provider ?? null,
    model: info.model ?? null,
    msg_serial: message.msg_serial,
    status: message.status,
  };
  if (message.cancelled_by !== null && message.cancelled_by !== undefined) data.cancelled_by = message.cancelled_by;
  const failure = message.extras?.failure;
  if (typeof failure === "string") data.failure = failure;
  return data;
}

function authorChunk(message) {
  return { type: "data-author", id: String(message.msg_serial), data: author(message) };
}

function textId(message) {
  return `text-${message.msg_serial}`;
}

/** A `tool` message (`{tool, arguments, result, error}`) as a dynamic tool call. */
export function toolChunks(message) {
  const data = message.data !== null && typeof message.data === "object" && !Array.isArray(message.data) ? message.data : {};
  const toolCallId = `tool-${message.msg_serial}`;
  const started = {
    type: "tool-input-available",
    toolCallId,
    toolName: typeof data.tool === "string" ? data.tool : "tool",
    input: data.arguments ?? null,
    dynamic: true,
  };
  const result = data.result ?? null;
  if (data.error === true) {
    const errorText = typeof result === "string" ? result : messageText(message);
    return [started, { type: "tool-output-error", toolCallId, errorText, dynamic: true }];
  }
  return [started, { type: "tool-output-available", toolCallId, output: result, dynamic: true }];
}

/**
 * The chunks of the answers to one message, from the room's events in serial order.
 * `expected` are the agents the reply waits for: it is `done` once each of them answered
 * (and the answer ended) or said it stays silent, and every answer it showed has ended.
 * Answers of other agents that arrive meanwhile are shown too.
 */
export class ReplyChunks {
  constructor(channel, msgSerial, again, expected) {
    this.channel = channel;
    this.msgSerial = msgSerial;
    this.again = again ?? null;
    this.waiting = new Set(expected);
    this.answers = new Map(); // msg_serial -> the answer as it stands
    this.sent = new Map(); // text sent of each answer still open
    this.givenUp = null;
  }
  get messageId() {
    return replyId(this.msgSerial, this.again);
  }
  get done() {
    return this.waiting.size === 0 && this.sent.size === 0;
  }
  start() {
    return { type: "start", messageId: this.messageId, messageMetadata: replyMetadata(this.channel, this.msgSerial, this.again) };
  }
  /** The chunks an event makes (none for an event of another message). */
  feed(event) {
    if (event.type === "create") return this.feedMessage(messageFromCreate(event));
    const target = event.msg_serial;
    if (!this.sent.has(target)) return [];
    const message = applyEvent(this.answers.get(target), event);
    this.answers.set(target, message);
    const out = this._delta(message);
    if (FINAL_STATUSES.has(message.status) || message.deleted) out.push(...this._end(message));
    return out;
  }
  /** The chunks of a message as it stands (created, or read from the room's messages). */
  feedMessage(message) {
    if (!sameKey(answerKey(message), [this.msgSerial, this.again])) return [];
    if (message.name === SILENT) {
      this.waiting.delete(message.client_id || "");
      return [];
    }
    if (message.name === "tool") return toolChunks(message);
    if (message.name !== "text") return [];
    this.waiting.delete(message.client_id || "");
    this.answers.set(message.msg_serial, message);
    this.sent.set(message.msg_serial, "");
    const out = [authorChunk(message), { type: "text-start", id: textId(message) }, ...this._delta(message)];
    if (FINAL_STATUSES.has(message.status)) out.push(...this._end(message));
    return out;
  }
  _delta(message) {
    const sent = this.sent.get(message.msg_serial);
    const text = message.deleted ? sent : messageText(message);
    if (text.length <= sent.length || !text.startsWith(sent)) return [];
    this.sent.set(message.msg_serial, text);
    return [{ type: "text-delta", id: textId(message), delta: text.slice(sent.length) }];
  }
  _end(message) {
    this.sent.delete(message.msg_serial);
    return [{ type: "text-end", id: textId(message) }, authorChunk(message)];
  }
  /** Stop waiting for the agents that have not shown up. */
  giveUp(why) {
    this.waiting.clear();
    this.givenUp = why;
  }
  /** The last chunk: `error` if an answer failed (or an agent never came), else `abort` if
   * one was stopped, else `finish`. */
  finish() {
    const answers = [...this.answers.values()];
    const failures = answers.filter((m) => m.status === "failed").map((m) => `${author(m).name}: ${m.extras?.failure ?? "failed"}`);
    if (this.givenUp !== null) failures.push(this.givenUp);
    if (failures.length) return [{ type: "error", errorText: failures.join("; ") }];
    const stopped = answers.find((m) => m.status === "cancelled");
    if (stopped) return [{ type: "abort", reason: stopped.cancelled_by ? `stopped by ${stopped.cancelled_by}` : "stopped" }];
    return [{ type: "finish", finishReason: "stop" }];
  }
}

function textPart(message) {
  return { type: "text", text: messageText(message), state: message.status === "streaming" ? "streaming" : "done" };
}

function toolPart(message) {
  const [started, ended] = toolChunks(message);
  const part = { type: "dynamic-tool", toolName: started.toolName, toolCallId: started.toolCallId, input: started.input };
  if (ended.type === "tool-output-error") return { ...part, state: "output-error", errorText: ended.errorText };
  return { ...part, state: "output-available", output: ended.output };
}

function standalone(message) {
  if (agentInfo(message) !== null) {
    return { id: `msg-${message.msg_serial}`, role: "assistant", parts: [authorChunk(message), textPart(message)] };
  }
  return {
    id: `msg-${message.msg_serial}`,
    role: "user",
    parts: [{ type: "text", text: messageText(message) }],
    metadata: { client_id: message.client_id, msg_serial: message.msg_serial, timestamp: message.timestamp },
  };
}

/**
 * Messages (oldest first) as UIMessages, as `GET /v1/ai-sdk/chat/{id}/messages` gives
 * them: people's text messages as `user` (id `msg-<msg_serial>`, metadata `{client_id,
 * msg_serial, timestamp}`), the answers to each message as one `assistant` message placed
 * where the first of them is, an agent's message that answers nothing as an `assistant`
 * message of its own. Deleted messages, silence markers and other kinds are left out.
 */
export function uiMessages(channel, messages) {
  const out = [];
  const replies = new Map();
  for (const message of messages) {
    const name = message.name ?? "text";
    if (message.deleted || (name !== "text" && name !== "tool")) continue;
    const key = answerKey(message);
    if (key === null) {
      if (name === "text") out.push(standalone(message));
      continue;
    }
    const id = replyId(...key);
    let reply = replies.get(id);
    if (!reply) {
      reply = { id, role: "assistant", parts: [], metadata: replyMetadata(channel, ...key) };
      replies.set(id, reply);
      out.push(reply);
    }
    if (name === "tool") reply.parts.push(toolPart(message));
    else reply.parts.push(authorChunk(message), textPart(message));
  }
  return out;
}
