// Who answers a message: the rule of roomcast.protocol.answering (docs/agents.md), for the
// chat transport, which names the agents a message awaits before it publishes it, as the
// server's AI SDK route does. tests/ecosystem checks that both give the same answers.

import { patternMatches } from "./capability.js";

/** `extras.awaits` of a message: the agents its sender waits for. */
export const AWAITS = "awaits";
/** The name of the marker an awaited agent publishes when it stays silent. */
export const SILENT = "agent.silent";
/** `extras.regenerate` of an answer made because it was asked again. */
export const REGENERATE_KEY = "regenerate";
/** The chain depth cap of an agent whose own cap is not known. */
export const DEFAULT_MAX_CHAIN_DEPTH = 3;

const SYNTAX = /[\\^$.*+?()[\]{}|/]/g;

function isInteger(value) {
  return Number.isInteger(value);
}

/** JSON as Python's `json.dumps` writes it (", " and ": "), so texts agree with the server's. */
export function pythonJson(value) {
  if (Array.isArray(value)) return `[${value.map(pythonJson).join(", ")}]`;
  if (value !== null && typeof value === "object") {
    return `{${Object.entries(value)
      .map(([key, item]) => `${JSON.stringify(key)}: ${pythonJson(item)}`)
      .join(", ")}}`;
  }
  return JSON.stringify(value ?? null);
}

/** The text of a message as the agents read it (JSON data is shown as JSON). */
export function messageText(message) {
  const data = message.data;
  if (typeof data === "string") return data;
  if (data === null || data === undefined) return "";
  return pythonJson(data);
}

/** Whether `text` names the agent: `@name` or `name` as a whole word, any case. */
export function mentions(text, name) {
  const pattern = `(?<![A-Za-z0-9_.@-])@?${name.replace(SYNTAX, "\\$&")}(?![A-Za-z0-9_-])`;
  return new RegExp(pattern, "iu").test(text);
}

/** `extras.agent` of an agent's answer ({provider, model, depth, name}), else null. */
export function agentInfo(message) {
  const info = message.extras?.agent;
  return info !== null && typeof info === "object" && !Array.isArray(info) ? info : null;
}

/** A person's message has depth 0; an answer has its trigger's depth + 1. */
export function depthOf(message) {
  const depth = agentInfo(message)?.depth;
  return isInteger(depth) ? depth : 0;
}

/** `extras.reply_to` of an answer, else null. */
export function replyTo(message) {
  const target = message.extras?.reply_to;
  return isInteger(target) ? target : null;
}

/** The agents `message` waits for (`extras.awaits`). */
export function awaits(message) {
  const names = message.extras?.[AWAITS];
  return Array.isArray(names) ? names.filter((name) => typeof name === "string") : [];
}

/** Whether an agent should consider answering a message: `{answer, reason, needsJudge}`. */
export function consider({ name, policy, message, maxChainDepth, agentNames }) {
  const no = (reason) => ({ answer: false, reason, needsJudge: false });
  if (message.client_id === name) return no("its own message");
  if (message.deleted || message.status !== "complete") return no(`the message is ${message.status}`);
  if ((message.name ?? "text") !== "text") return no(`a '${message.name}' message, not text`);
  const depth = depthOf(message);
  if (depth >= maxChainDepth) return no(`chain depth ${depth} reached the cap ${maxChainDepth}`);
  const text = messageText(message);
  if (!text.trim()) return no("empty text");
  const named = mentions(text, name);
  if (policy === "mention") return { answer: named, reason: named ? "mentioned" : "not mentioned", needsJudge: false };
  if (policy === "always") return { answer: true, reason: "policy always", needsJudge: false };
  if (named) return { answer: true, reason: "mentioned", needsJudge: false };
  const others = [...agentNames].filter((other) => other !== name && mentions(text, other));
  if (others.length) return no(`addressed to ${others.sort().join(", ")}`);
  return { answer: true, reason: "policy auto", needsJudge: true };
}

/** The names in a room's `root.agents` (a LiveObjects), or null while it has no such list. */
export function roomAgents(objects) {
  if (!objects?.state?.root) return null;
  const listed = objects.ref(objects.entries("root")?.agents);
  const entries = listed ? objects.state[listed] : null;
  return entries?.type === "map" ? new Set(Object.keys(entries.entries || {})) : null;
}

/**
 * The agents (`GET /v1/agents` items) that answer `message` on `channel` or say that they
 * stay silent: those whose `rooms` match, that the room lists (`listed`, from
 * `roomAgents`; null: every agent is in), and that `consider` does not rule out.
 */
export function expectedAgents(agents, channel, message, listed) {
  const agentNames = new Set(agents.map((agent) => agent.name));
  return agents
    .filter((agent) => (agent.rooms || []).some((pattern) => patternMatches(pattern, channel)))
    .filter((agent) => listed === null || listed.has(agent.name))
    .filter((agent) => consider({ name: agent.name, policy: agent.policy, message, maxChainDepth: DEFAULT_MAX_CHAIN_DEPTH, agentNames }).answer)
    .map((agent) => agent.name);
}
