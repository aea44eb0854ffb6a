// AG-UI's own client (`HttpAgent` of @ag-ui/client) against a roomcast server's
// POST /v1/ag-ui: node run.mjs SCENARIO SERVER ROOM. The room is the thread (room:<ROOM>).
// Prints one JSON object with what the scenario saw, its last line; the tests in
// tests/ecosystem/test_ag_ui_node.py run it and assert on it.
//
// Every run goes through the client's runAgent, which verifies the stream (verifyEvents:
// runs, messages and tool calls open and close in order) and applies it to the agent's
// messages and state. A run that throws is reported in `failures`, and whatever the client
// writes to the console (a patch it could not apply, an event it dropped) in `warnings`;
// the tests expect both empty unless a scenario says otherwise.
import { randomUUID } from "node:crypto";

import { HttpAgent } from "@ag-ui/client";
import WebSocket from "ws";

const [scenario, server, room] = process.argv.slice(2);
const url = `${server}/v1/ag-ui`;
const channel = `room:${room}`;

const failures = [];
const warnings = [];
for (const level of ["warn", "error"]) {
  const write = console[level].bind(console);
  console[level] = (...args) => {
    warnings.push(args.map((a) => (a instanceof Error ? a.message : String(a))).join(" "));
    write(...args);
  };
}

function agent(clientId = "alice") {
  return new HttpAgent({ url, threadId: room, headers: { "X-Roomcast-Client-Id": clientId } });
}

function ask(httpAgent, text) {
  const message = { id: `user-${randomUUID()}`, role: "user", content: text };
  httpAgent.addMessage(message);
  return message;
}

// One run: every event the client let through (after its verification), in order, the
// outcome the client read from RUN_FINISHED, and the agent's messages and state once the
// run is over. `onEvent(event)` may act mid-run.
async function run(httpAgent, label, onEvent = () => {}) {
  const events = [];
  let finished = null;
  let outcome;
  try {
    const result = await httpAgent.runAgent(
      {},
      {
        onEvent: ({ event }) => {
          events.push(event);
          onEvent(event);
        },
        onRunFinishedEvent: (params) => {
          finished = params.outcome;
        },
      },
    );
    outcome = { resolved: true, newMessages: result.newMessages };
  } catch (error) {
    failures.push(`${label}: ${error?.message ?? String(error)}`);
    outcome = { resolved: false, error: error?.message ?? String(error) };
  }
  return {
    events,
    types: events.map((e) => e.type),
    messages: structuredClone(httpAgent.messages),
    state: structuredClone(httpAgent.state),
    finished,
    ...outcome,
  };
}

async function askOnce(text) {
  const alice = agent();
  const asked = ask(alice, text);
  return { asked, run: await run(alice, "run") };
}

// A run asking slowbot is aborted after the answer's first text; then two runs with no
// new message resume it at once: the aborted agent as it is (its last message the partial
// answer) and a fresh agent on the same thread (no messages).
async function abortThenResume() {
  const alice = agent();
  const asked = ask(alice, "@slowbot tell me everything");
  const aborted = await run(alice, "aborted run", (event) => {
    if (event.type === "TEXT_MESSAGE_CONTENT") alice.abortRun();
  });
  const afterAbort = structuredClone(alice.messages);
  const fresh = agent();
  const [same, again] = await Promise.all([run(alice, "resume"), run(fresh, "fresh resume")]);
  return { asked, aborted, afterAbort, same, fresh: again };
}

// A run asking slowbot, stopped through the AI SDK route's stop (alice cancels the answers
// to her message) after the answer's first text.
async function stop() {
  const alice = agent();
  const asked = ask(alice, "@slowbot tell me a long story");
  let stopped;
  const result = await run(alice, "run", (event) => {
    if (event.type === "TEXT_MESSAGE_CONTENT" && stopped === undefined) {
      stopped = fetch(`${server}/v1/ai-sdk/chat/${room}/stop`, {
        method: "POST",
        headers: { "X-Roomcast-Client-Id": "alice" },
      }).then(async (response) => ({ status: response.status, body: await response.json() }));
    }
  });
  return { asked, run: result, stopped: await stopped };
}

// Bob, a second person on the WebSocket (the API key, as client bob): enters the room's
// presence, says something to nobody in particular, and leaves; resolves with the server's
// answers to his three requests.
function bobDropsIn() {
  const key = encodeURIComponent(process.env.ROOMCAST_KEY);
  const ws = new WebSocket(`${server.replace(/^http/, "ws")}/v1/ws?key=${key}&client_id=bob`);
  const requests = [
    { action: "presence", channel, op: "enter", data: { kind: "human" } },
    { action: "publish", channel, data: "I am in for lunch too" },
    { action: "presence", channel, op: "leave" },
  ];
  const answers = [];
  return new Promise((resolve, reject) => {
    const next = () => {
      ws.send(JSON.stringify({ ...requests[answers.length], ref: answers.length + 1 }));
    };
    ws.on("error", reject);
    ws.on("message", (raw) => {
      const frame = JSON.parse(raw.toString());
      if (frame.action === "connected") next();
      else if (frame.action === "ok" || frame.action === "error") {
        answers.push(frame);
        if (frame.action === "error" || answers.length === requests.length) {
          ws.close();
          resolve(answers);
        } else next();
      }
    });
  });
}

// While alice's run waits for slowbot's answer (after its first text), bob drops in.
async function group() {
  const alice = agent();
  const asked = ask(alice, "@slowbot what is the plan?");
  let bob;
  const result = await run(alice, "run", (event) => {
    if (event.type === "TEXT_MESSAGE_CONTENT" && bob === undefined) bob = bobDropsIn();
  });
  return { asked, run: result, bob: await bob };
}

const scenarios = {
  bot: () => askOnce("@bot where do we eat?"),
  pollster: () => askOnce("@pollster what do we eat?"),
  two: () => askOnce("@bot @chef where and when?"),
  broken: () => askOnce("@broken are you there?"),
  resume: abortThenResume,
  stop,
  group,
};
const result = await scenarios[scenario]();
console.log(JSON.stringify({ ...result, failures, warnings }));
