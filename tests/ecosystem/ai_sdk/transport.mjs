// roomcast.js's RoomcastChatTransport with the AI SDK's own reader and schema, against a
// roomcast server: node transport.mjs SCENARIO SERVER ROOM. Prints one JSON object with what
// the scenario saw; tests/ecosystem/test_ai_sdk_transport.py runs it and asserts on it.
// The WebSocket class is the `ws` package's, given to the client (Node 20 has no global one).
import { isDeepStrictEqual } from "node:util";

import { AbstractChat } from "ai";
import WebSocket from "ws";

import { RoomcastChatTransport } from "../../../src/roomcast/web/roomcast.js";
import { expectedAgents } from "../../../src/roomcast/web/roomcast/answering.js";
import { uiMessages } from "../../../src/roomcast/web/roomcast/replies.js";
import { check, invalid, toMessage, userMessage } from "./chunks.mjs";

const [scenario, server, room] = process.argv.slice(2);
const api = `${server}/v1/ai-sdk/chat`;
const transports = [];

function transport(clientId) {
  const made = new RoomcastChatTransport({ url: `${server.replace(/^http/, "ws")}/v1/ws`, clientId, WebSocket });
  transports.push(made);
  return made;
}

// Every chunk of `stream`, validated, and how it ended (`done`, or the error's name).
async function collect(stream, { until = () => false, abort = null } = {}) {
  const chunks = [];
  const reader = stream.getReader();
  for (;;) {
    let next;
    try {
      next = await reader.read();
    } catch (error) {
      return { chunks, end: error.name };
    }
    if (next.done) return { chunks, end: "done" };
    await check(next.value);
    chunks.push(next.value);
    if (until(next.value)) abort.abort();
  }
}

async function roomMessages(clientId) {
  const response = await fetch(`${api}/${room}/messages`, { headers: { "X-Roomcast-Client-Id": clientId } });
  return (await response.json()).messages;
}

function send(chat, text, abortSignal) {
  return chat.sendMessages({ chatId: room, messages: [userMessage(text)], trigger: "submit-message", messageId: undefined, abortSignal });
}

// The room as `chat` shows it live: resolves with the first list `test` accepts.
function seen(chat, test) {
  return new Promise((resolve) => {
    const off = chat.onMessages(room, (messages) => {
      if (!test(messages)) return;
      off();
      resolve(JSON.parse(JSON.stringify(messages)));
    });
  });
}

const answered = (count) => (messages) =>
  messages.filter((m) => m.role === "assistant" && m.parts.some((p) => p.type === "data-author" && p.data.status === "complete")).length >= count;

async function sendAndRead() {
  const { chunks, end } = await collect(await send(transport("alice"), "@bot where do we eat?"));
  return { types: chunks.map((c) => c.type), end, message: await toMessage(chunks), history: await roomMessages("alice") };
}

async function regenerate() {
  const chat = transport("alice");
  const asked = userMessage("@bot where do we eat?");
  const first = await collect(await chat.sendMessages({ chatId: room, messages: [asked], trigger: "submit-message" }));
  const replied = await toMessage(first.chunks);
  const again = await collect(await chat.sendMessages({ chatId: room, messages: [asked, replied], trigger: "regenerate-message", messageId: replied.id }));
  return { first: replied, again: await toMessage(again.chunks), end: again.end, history: await roomMessages("alice") };
}

async function quiet() {
  const { chunks } = await collect(await send(transport("alice"), "@quiet are you there?"));
  // Read at once: the stream ended on the marker, so it is there.
  const raw = await fetch(`${server}/v1/channels/room:${room}/messages`, { headers: { "X-Roomcast-Client-Id": "alice" } });
  return { types: chunks.map((c) => c.type), log: (await raw.json()).items, history: await roomMessages("alice") };
}

async function refused() {
  const chat = transport("alice");
  const out = {};
  try {
    await chat.sendMessages({ chatId: room, messages: [{ id: "f", role: "user", parts: [{ type: "file", url: "data:,x", mediaType: "text/plain" }] }], trigger: "submit-message" });
    out.file = "accepted";
  } catch (error) {
    out.file = error.message;
  }
  out.badIds = [];
  for (const chatId of ["no:colons", ".", ".."]) {
    try {
      await chat.sendMessages({ chatId, messages: [userMessage("@bot hi")], trigger: "submit-message" });
      out.badIds.push("accepted");
    } catch (error) {
      out.badIds.push(error.code);
    }
  }
  out.history = await roomMessages("alice");
  return out;
}

async function resume() {
  const chat = transport("alice");
  const abort = new AbortController();
  const first = await collect(await send(chat, "@slowbot tell me", abort.signal), { until: (c) => c.type === "text-delta", abort });
  const { chunks, end } = await collect(await chat.reconnectToStream({ chatId: room }));
  return {
    first: first.chunks.map((c) => c.type),
    firstEnd: first.end,
    end,
    message: await toMessage(chunks),
    history: await roomMessages("alice"),
    after: await chat.reconnectToStream({ chatId: room }),
  };
}

// An answer to a message posted elsewhere (the web UI, the HTTP API: no extras.awaits).
async function resumeOther() {
  const chat = transport("bob");
  const streaming = seen(chat, (messages) => messages.some((m) => m.parts.some((p) => p.type === "text" && p.state === "streaming")));
  const headers = { "X-Roomcast-Client-Id": "alice", "Content-Type": "application/json" };
  await fetch(`${server}/v1/channels/room:${room}/messages`, { method: "POST", headers, body: JSON.stringify({ data: "@slowbot tell me" }) });
  await streaming;
  const { chunks, end } = await collect(await chat.reconnectToStream({ chatId: room }));
  return { end, message: await toMessage(chunks), history: await roomMessages("bob") };
}

async function stop() {
  const alice = transport("alice");
  const reader = (await send(alice, "@slowbot tell me")).getReader();
  const asker = [];
  while (asker.at(-1)?.type !== "text-delta") {
    const { value } = await reader.read();
    await check(value);
    asker.push(value);
  }
  // Another person follows the same answer on a transport of their own.
  const watched = collect(await transport("bob").reconnectToStream({ chatId: room }));
  // An id that names no assistant message is refused: it never widens to every answer.
  const wrongId = await alice.stop(room, { messageId: "msg-1" }).then(
    (result) => result,
    (error) => error.code,
  );
  const stopped = await alice.stop(room);
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    await check(value);
    asker.push(value);
  }
  return { wrongId, stopped, askerEnd: asker.at(-1), watcherEnd: (await watched).chunks.at(-1), history: await roomMessages("bob") };
}

async function shared() {
  const alice = transport("alice");
  const bob = transport("bob");
  const bobSeesAlice = seen(bob, answered(1));
  const fromAlice = await collect(await send(alice, "@bot alice asks"));
  const bobSees = await bobSeesAlice;
  const aliceSeesBob = seen(alice, answered(2));
  const fromBob = await collect(await send(bob, "@bot bob asks"));
  const aliceSees = await aliceSeesBob;
  return {
    alice: await toMessage(fromAlice.chunks),
    bob: await toMessage(fromBob.chunks),
    bobSees,
    aliceSees,
    history: await roomMessages("alice"),
  };
}

// The AI SDK's own Chat (what useChat runs) with a plain array for its state.
class ArrayState {
  status = "ready";
  error = undefined;
  messages = [];
  pushMessage = (message) => {
    this.messages = [...this.messages, message];
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index, message) => {
    this.messages = this.messages.map((m, i) => (i === index ? message : m));
  };
  snapshot = (thing) => structuredClone(thing);
}

function chat(clientId) {
  const made = transport(clientId);
  const sdkChat = new AbstractChat({ id: room, transport: made, state: new ArrayState() });
  sdkChat.waiters = new Set();
  made.onMessages(room, (messages) => {
    sdkChat.messages = messages; // useChat's setMessages
    for (const waiter of [...sdkChat.waiters]) waiter();
  });
  return sdkChat;
}

// Resolves once the chat's messages are `expected` (now, or after a change from the room).
function shows(sdkChat, expected) {
  return new Promise((resolve) => {
    const test = () => {
      if (!isDeepStrictEqual(JSON.parse(JSON.stringify(sdkChat.messages)), expected)) return;
      sdkChat.waiters.delete(test);
      resolve();
    };
    sdkChat.waiters.add(test);
    test();
  });
}

async function useChat() {
  const alice = chat("alice");
  const bob = chat("bob");
  await alice.sendMessage({ text: "@bot alice asks" });
  await bob.sendMessage({ text: "@bot bob asks" });
  const history = await roomMessages("alice");
  // Both chats come to show the whole room: each sees the other's message and answer.
  await Promise.all([shows(alice, history), shows(bob, history)]);
  return { status: [alice.status, bob.status], alice: JSON.parse(JSON.stringify(alice.messages)), bob: JSON.parse(JSON.stringify(bob.messages)), history };
}

// The rules ported from Python on the cases the test sends on stdin.
async function agree() {
  let input = "";
  for await (const piece of process.stdin) input += piece;
  const { expected, listed } = JSON.parse(input);
  return {
    expected: expected.map(({ agents, channel, message, listed: names }) => expectedAgents(agents, channel, message, names === null ? null : new Set(names))),
    listed: uiMessages(listed.channel, listed.messages),
  };
}

const scenarios = { send: sendAndRead, useChat, regenerate, quiet, refused, resume, resumeOther, stop, shared, agree };
const result = await scenarios[scenario]();
for (const made of transports) made.close();
console.log(JSON.stringify({ ...result, invalid }));
