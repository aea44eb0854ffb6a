// What every part of the page shares: the state of the open room, and how to tell the
// user something went wrong.

import { MessageStore } from "./roomcast.js";

const NAME_KEY = "roomcast.name";

export const $ = (id) => document.getElementById(id);

/** Everything the page knows; one room at a time. */
export const app = {
  name: localStorage.getItem(NAME_KEY) || "",
  client: null,
  channel: null,
  room: null,
  store: new MessageStore(),
  elements: new Map(), // msg_serial -> <li>
  unsubscribe: [],
  hasMore: false,
  replyTo: null,
  typers: new Map(), // client_id -> {name, until}
  lastTypingSent: 0,
  everConnected: false,
  configuredAgents: [],
  mentionHints: [], // agents the last message sent @mentioned that are not in the room
  toast,
  displayName,
  isAgentId,
  shownName,
};

/** Remember the display name on this device. */
export function saveName(name) {
  app.name = name;
  localStorage.setItem(NAME_KEY, name);
}

let toastTimer = null;
/** Show `text` for a few seconds. */
export function toast(text) {
  const box = $("toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (box.hidden = true), 5000);
}

/** Take down the toast shown, if any. */
export function clearToast() {
  clearTimeout(toastTimer);
  $("toast").hidden = true;
}

/** Await `promise`; on failure, say "Could not <what>" and resolve with null. */
export async function attempt(what, promise) {
  try {
    return await promise;
  } catch (error) {
    toast(`Could not ${what}: ${error.message}`);
    return null;
  }
}

/** Whether `clientId` is one of the server's agents: only those that the server lists (`http.agents()`)
 * are shown as agents (a badge, their name), whatever a client says of itself. */
export function isAgentId(clientId) {
  return Boolean(clientId) && app.configuredAgents.some((agent) => agent.name === clientId);
}

/** The name `clientId` goes by: `name` (from its presence or a signal), unless that is an
 * agent's name and `clientId` is not that agent; then its client_id. */
export function shownName(clientId, name) {
  const wanted = name.trim().toLowerCase();
  const agent = app.configuredAgents.find((configured) => configured.name.toLowerCase() === wanted);
  return agent && agent.name !== clientId ? clientId : name;
}

/** The name to show for a client_id: from presence data if we have it. */
export function displayName(clientId) {
  if (!clientId) return "server";
  for (const member of app.channel?.presence.list() || []) {
    if (member.client_id === clientId && member.data && typeof member.data.name === "string") return shownName(clientId, member.data.name);
  }
  return clientId;
}
