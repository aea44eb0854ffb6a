// "Alice is typing…": our own typing signals, and who else is typing or thinking.

import { $, app, displayName, isAgentId, shownName } from "./state.js";

const TYPING_EVERY_MS = 2000;
const TYPING_SHOWN_MS = 4000;

/** Tell the room we are typing (`text` is what the box holds), at most every 2 s. */
export function sendTyping(text) {
  const now = Date.now();
  if (app.channel && text.trim() && now - app.lastTypingSent > TYPING_EVERY_MS) {
    app.lastTypingSent = now;
    app.channel.signal("typing", { name: app.name });
  }
}

/** A `signal` of the room: someone else's `typing` shows for a few seconds. */
export function onSignal(signal) {
  if (signal.name !== "typing" || signal.client_id === app.client.clientId) return;
  const name = typeof signal.data?.name === "string" ? shownName(signal.client_id, signal.data.name) : displayName(signal.client_id);
  app.typers.set(signal.client_id, { name, until: Date.now() + TYPING_SHOWN_MS });
  renderTyping();
  setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
}

/** Who is typing now, and which agents are thinking or waiting their turn (their presence says so). */
export function renderTyping() {
  const now = Date.now();
  const names = [];
  for (const [id, entry] of app.typers) {
    if (entry.until < now) app.typers.delete(id);
    else names.push(entry.name);
  }
  for (const member of app.channel?.presence.list() || []) {
    const status = isAgentId(member.client_id) ? member.data?.status : null;
    if (status === "thinking") names.push(`${displayName(member.client_id)} (${member.data.queued ? "queued" : "thinking"})`);
  }
  const unique = [...new Set(names)];
  $("typing").textContent = unique.length ? `${unique.join(", ")} ${unique.length > 1 ? "are" : "is"} typing…` : "";
}
