// The AI SDK's own client against a roomcast server: node chat.mjs SCENARIO SERVER ROOM.
// Prints one JSON object with what the scenario saw; tests/ecosystem/test_ai_sdk_node.py
// runs it and asserts on it. Each chunk is checked against the schema `ai` exports.
import { DefaultChatTransport } from "ai";

import { check, invalid, toMessage, userMessage } from "./chunks.mjs";

const [scenario, server, room] = process.argv.slice(2);
const api = `${server}/v1/ai-sdk/chat`;

function transport(headers) {
  return new DefaultChatTransport({ api, headers });
}

// Every chunk of `stream`, validated; stops early once `until(chunk)` holds.
async function collect(stream, until = () => false) {
  const chunks = [];
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    await check(value);
    chunks.push(value);
    if (until(value)) {
      await reader.cancel();
      break;
    }
  }
  return chunks;
}

async function roomMessages(headers) {
  const response = await fetch(`${api}/${room}/messages`, { headers });
  return (await response.json()).messages;
}

function send(chat, text, abortController = new AbortController()) {
  return chat.sendMessages({
    chatId: room,
    messages: [userMessage(text)],
    trigger: "submit-message",
    messageId: undefined,
    abortSignal: abortController.signal,
  });
}

const alice = { "X-Roomcast-Client-Id": "alice" };
const bob = { "X-Roomcast-Client-Id": "bob" };

async function sendAndRead() {
  const chunks = await collect(await send(transport(alice), "@bot where do we eat?"));
  const message = await toMessage(chunks);
  const history = await roomMessages(alice);
  return { types: chunks.map((c) => c.type), message, history };
}

// An answer that calls a tool (pollster), or one that fails (broken): the chunks, and the
// message the SDK's reader makes of them.
async function askOne(text) {
  const chunks = await collect(await send(transport(alice), text));
  return { chunks, message: await toMessage(chunks), history: await roomMessages(alice) };
}

async function resume() {
  const chat = transport(alice);
  const abort = new AbortController();
  const first = await collect(await send(chat, "@slowbot tell me", abort), (c) => c.type === "text-delta");
  abort.abort();
  const stream = await chat.reconnectToStream({ chatId: room });
  const chunks = await collect(stream);
  const message = await toMessage(chunks);
  const history = await roomMessages(alice);
  return { first: first.map((c) => c.type), message, history };
}

async function stop() {
  const reader = (await send(transport(alice), "@slowbot tell me")).getReader();
  const asker = [];
  while (asker.at(-1)?.type !== "text-delta") {
    const { value } = await reader.read();
    await check(value);
    asker.push(value);
  }
  // A second viewer follows the same answer through the reconnect request.
  const watched = collect(await transport(bob).reconnectToStream({ chatId: room }));
  const stopped = await fetch(`${api}/${room}/stop`, { method: "POST", headers: alice });
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    await check(value);
    asker.push(value);
  }
  return {
    stop: { status: stopped.status, body: await stopped.json() },
    asker: asker.map((c) => c.type),
    askerEnd: asker.at(-1),
    watcherEnd: (await watched).at(-1),
    history: await roomMessages(bob),
  };
}

async function shared() {
  const fromAlice = await collect(await send(transport(alice), "@bot alice asks"));
  const bobSees = await roomMessages(bob);
  const fromBob = await collect(await send(transport(bob), "@bot bob asks"));
  const aliceSees = await roomMessages(alice);
  return {
    alice: await toMessage(fromAlice),
    bob: await toMessage(fromBob),
    bobSees,
    aliceSees,
  };
}

async function refused() {
  const out = {};
  for (const [name, headers] of Object.entries({
    badKey: { Authorization: "Bearer app:wrong" },
    readOnly: { Authorization: `Bearer ${process.env.READ_ONLY_TOKEN}` },
  })) {
    try {
      await send(transport(headers), "@bot let me in");
      out[name] = "accepted";
    } catch (error) {
      out[name] = error.statusCode ?? String(error);
    }
  }
  out.history = await roomMessages(alice);
  return out;
}

const scenarios = {
  send: sendAndRead,
  tool: () => askOne("@pollster what do we eat?"),
  failed: () => askOne("@broken are you there?"),
  resume,
  stop,
  shared,
  refused,
};
const result = await scenarios[scenario]();
console.log(JSON.stringify({ ...result, invalid }));
