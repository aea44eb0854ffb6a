// The roomcast web UI: join with a name, pick a room, chat with people and agents.
// Everything it does goes through roomcast.js (the protocol client) and the HTTP API.

import { Client, MessageStore, RoomcastError } from "./roomcast.js";
import { renderMarkdown } from "./markdown.js";
import { renderSide, setupSide } from "./side.js";
import { el, keepFocus } from "./dom.js";

const $ = (id) => document.getElementById(id);
const REWIND = 50;
const PAGE = 50;
const TYPING_EVERY_MS = 2000;
const TYPING_SHOWN_MS = 4000;
const REACTIONS = ["👍", "❤️", "😂", "🎉", "👀"];
const NAME_KEY = "roomcast.name";
const THEME_KEY = "roomcast.theme";

const authMeta = document.querySelector('meta[name="roomcast-auth-url"]')?.content || "";
const AUTH_URL = authMeta.startsWith("{{") ? "" : authMeta;

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
  toast,
  displayName,
};

// ---------------------------------------------------------------------- helpers

let toastTimer = null;
function toast(text) {
  const box = $("toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (box.hidden = true), 5000);
}

function clientIdFor(name) {
  const id = name.trim().replace(/[^A-Za-z0-9_.-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 60);
  return id || "guest";
}

/** The name to show for a client_id: from presence data if we have it. */
function displayName(clientId) {
  if (!clientId) return "server";
  for (const member of app.channel?.presence.list() || []) {
    if (member.client_id === clientId && member.data && typeof member.data.name === "string") return member.data.name;
  }
  return clientId;
}

function initials(name) {
  const parts = String(name).split(/[\s._-]+/).filter(Boolean);
  const letters = parts.length > 1 ? parts[0][0] + parts[1][0] : String(name).slice(0, 2);
  return letters.toUpperCase();
}

function hue(text) {
  let h = 0;
  for (const ch of String(text)) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

function timeOf(ms) {
  const date = new Date(ms);
  return { short: date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }), iso: date.toISOString() };
}

function isAgent(message) {
  return Boolean(message.extras?.agent) || app.configuredAgents.some((a) => a.name === message.client_id);
}

// ---------------------------------------------------------------------- theme

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  const next = theme === "dark" ? "light" : "dark";
  $("theme-toggle").setAttribute("aria-label", `Switch to ${next} theme`);
}

function setupTheme() {
  const saved = localStorage.getItem(THEME_KEY);
  const dark = saved ? saved === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  applyTheme(dark ? "dark" : "light");
  $("theme-toggle").addEventListener("click", () => {
    const theme = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    localStorage.setItem(THEME_KEY, theme);
    applyTheme(theme);
  });
}

// ---------------------------------------------------------------------- connection

async function fetchToken() {
  const response = await fetch(AUTH_URL, {
    method: "POST",
    credentials: "include",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ client_id: clientIdFor(app.name) }),
  });
  if (!response.ok) throw new RoomcastError(40100, `the auth_url answered ${response.status}`);
  const body = await response.json();
  if (typeof body.token !== "string") throw new RoomcastError(40100, "the auth_url sent no token");
  return body.token;
}

/** Headers for the HTTP API: the token if there is one, else our client id. */
export function apiHeaders() {
  const headers = {};
  if (app.client?.token) headers.Authorization = `Bearer ${app.client.token}`;
  else headers["X-Roomcast-Client-Id"] = clientIdFor(app.name);
  return headers;
}

function showConnection({ state, resumed, reason }) {
  const box = $("conn-state");
  let shown = state;
  if (state === "connected") {
    shown = app.everConnected ? (resumed ? "resumed" : "reconnected") : "connected";
    app.everConnected = true;
  }
  const labels = { connecting: "connecting…", reconnecting: "reconnecting…", failed: "disconnected", closed: "closed" };
  box.dataset.state = shown;
  box.textContent = labels[shown] || shown;
  box.title = reason || "";
}

async function connect() {
  if (app.client) return app.client;
  const client = new Client({ clientId: clientIdFor(app.name), authCallback: AUTH_URL ? fetchToken : null });
  app.client = client;
  client.on("state", showConnection);
  client.on("failed", (error) => toast(`Disconnected: ${error.message}`));
  try {
    await client.connect();
  } catch (error) {
    app.client = null;
    throw error;
  }
  loadAgents();
  return client;
}

async function loadAgents() {
  try {
    const response = await fetch("/v1/agents", { headers: apiHeaders() });
    if (response.ok) app.configuredAgents = (await response.json()).items || [];
  } catch {
    app.configuredAgents = [];
  }
  if (app.channel) renderSide(app);
}

// ---------------------------------------------------------------------- routing

function route() {
  const match = location.hash.match(/^#\/room\/([A-Za-z0-9_.:-]{1,195})$/);
  return match ? match[1] : null;
}

function show(view) {
  for (const id of ["join", "home", "room"]) $(id).hidden = id !== view;
  document.body.dataset.view = view;
}

async function navigate() {
  if (!app.name) {
    show("join");
    $("join-name").focus();
    return;
  }
  try {
    await connect();
  } catch (error) {
    show("join");
    $("join-error").textContent = `Could not join as "${app.name}": ${error.message}`;
    return;
  }
  const room = route();
  if (room) await openRoom(room);
  else await openHome();
}

async function openHome() {
  await leaveRoom();
  show("home");
  $("room-title").textContent = "";
  document.title = "roomcast";
  $("me-name").textContent = app.name;
  const list = $("room-list");
  list.replaceChildren(el("li", { class: "muted", text: "Loading…" }));
  try {
    const response = await fetch("/v1/channels?prefix=room:&limit=200", { headers: apiHeaders() });
    const items = response.ok ? (await response.json()).items || [] : [];
    list.replaceChildren(
      ...items.map((item) => {
        const short = item.channel.slice("room:".length);
        return el("li", {}, el("a", { href: `#/room/${short}`, text: `# ${short}` }), el("span", { class: "muted", text: item.occupancy ? ` · ${item.occupancy} here` : "" }));
      }),
    );
    if (!items.length) list.replaceChildren(el("li", { class: "muted", text: "No rooms yet: create one." }));
  } catch (error) {
    list.replaceChildren(el("li", { class: "error", text: `Could not list rooms: ${error.message}` }));
  }
}

async function leaveRoom() {
  for (const off of app.unsubscribe.splice(0)) off();
  if (app.channel) {
    const channel = app.channel;
    app.channel = null;
    try {
      await channel.presence.leave();
      await channel.detach();
    } catch {
      /* the connection may be down; the server cleans up */
    }
  }
  app.room = null;
}

async function openRoom(room) {
  if (app.room === room && app.channel) return;
  await leaveRoom();
  app.room = room;
  show("room");
  $("room-title").textContent = `# ${room}`;
  document.title = `#${room} · roomcast`;
  app.store = new MessageStore();
  app.elements = new Map();
  app.typers.clear();
  app.replyTo = null;
  $("messages").replaceChildren();
  $("reply-preview").hidden = true;
  const channel = app.client.channel(`room:${room}`);
  app.channel = channel;
  app.unsubscribe.push(
    channel.on("attached", onAttached),
    channel.on("event", onEvent),
    channel.on("presence", () => {
      renderSide(app);
      renderTyping();
    }),
    channel.on("objects", scheduleSide),
    channel.on("signal", onSignal),
    channel.on("error", (error) => toast(`Cannot open #${room}: ${error.message}`)),
  );
  try {
    await channel.attach({ rewind: REWIND });
    await channel.presence.enter({ name: app.name, kind: "human" });
  } catch (error) {
    toast(`Cannot open #${room}: ${error.message}`);
  }
  $("composer-input").focus();
}

// ---------------------------------------------------------------------- channel events

function onAttached(attached) {
  if (!attached.resumed) {
    // A fresh snapshot: the last messages as of its serial, then live events.
    app.store.reset(attached.messages || []);
    app.elements = new Map();
    $("messages").replaceChildren();
    for (const message of app.store.list()) renderMessage(message);
    app.hasMore = (attached.messages || []).length >= REWIND;
    $("load-earlier").hidden = !app.hasMore;
    scrollToEnd();
  }
  renderSide(app);
}

function onEvent(event) {
  if (event.type === "object") return;
  const nearEnd = isNearEnd();
  const message = app.store.apply(event);
  if (!message) return;
  renderMessage(message);
  if (event.type === "create" && message.client_id) app.typers.delete(message.client_id);
  renderTyping();
  // Messages that answer this one show its text in their reply link.
  if (event.type !== "create") {
    for (const other of app.store.list()) if (other.extras?.reply_to === message.msg_serial) renderMessage(other);
  }
  if (nearEnd || (event.type === "create" && message.client_id === app.client.clientId)) scrollToEnd();
}

let sideQueued = false;
function scheduleSide() {
  if (sideQueued) return;
  sideQueued = true;
  requestAnimationFrame(() => {
    sideQueued = false;
    if (app.channel) renderSide(app);
  });
}

function onSignal(signal) {
  if (signal.name !== "typing" || signal.client_id === app.client.clientId) return;
  const name = typeof signal.data?.name === "string" ? signal.data.name : displayName(signal.client_id);
  app.typers.set(signal.client_id, { name, until: Date.now() + TYPING_SHOWN_MS });
  renderTyping();
  setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
}

function renderTyping() {
  const now = Date.now();
  const names = [];
  for (const [id, entry] of app.typers) {
    if (entry.until < now) app.typers.delete(id);
    else names.push(entry.name);
  }
  for (const member of app.channel?.presence.list() || []) {
    const status = member.data?.kind === "agent" ? member.data.status : null;
    if (status === "thinking") names.push(`${displayName(member.client_id)} (thinking)`);
  }
  const unique = [...new Set(names)];
  $("typing").textContent = unique.length ? `${unique.join(", ")} ${unique.length > 1 ? "are" : "is"} typing…` : "";
}

// ---------------------------------------------------------------------- messages

function isNearEnd() {
  const scroller = $("scroller");
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
}

function scrollToEnd() {
  const scroller = $("scroller");
  scroller.scrollTop = scroller.scrollHeight;
}

function renderMessage(message) {
  const existing = app.elements.get(message.msg_serial);
  const node = buildMessage(message);
  if (existing) {
    // Keep an open editor and the focus where they are; update the item in place.
    if (existing.querySelector(".editor")) return;
    keepFocus(existing, () => {
      existing.className = node.className;
      Object.assign(existing.dataset, node.dataset);
      existing.replaceChildren(...node.childNodes);
    });
    setBusy(existing, message);
    return;
  } else {
    const list = $("messages");
    const after = [...app.elements.keys()].filter((serial) => serial > message.msg_serial).sort((a, b) => a - b)[0];
    if (after === undefined) list.append(node);
    else list.insertBefore(node, app.elements.get(after));
  }
  setBusy(node, message);
  app.elements.set(message.msg_serial, node);
}

/** A streaming answer is aria-busy, so screen readers read it once, when it is done. */
function setBusy(node, message) {
  if (message.status === "streaming") node.setAttribute("aria-busy", "true");
  else node.removeAttribute("aria-busy");
}

function badgeList(message) {
  const badges = [];
  if (message.cancelled_by || message.status === "cancelled") {
    badges.push(el("span", { class: "badge stopped", text: message.cancelled_by ? `stopped by ${displayName(message.cancelled_by)}` : "stopped" }));
  }
  if (message.status === "failed") {
    const reason = typeof message.extras?.failure === "string" ? message.extras.failure : "unknown error";
    badges.push(el("span", { class: "badge failed", text: `failed: ${reason}` }));
  }
  if (message.status === "streaming" && !message.cancelled_by) badges.push(el("span", { class: "badge live", text: "streaming…" }));
  if (message.extras?.edited_at && !message.deleted) badges.push(el("span", { class: "badge", text: "edited" }));
  return badges;
}

function buildMessage(message) {
  const mine = message.client_id === app.client?.clientId;
  const author = displayName(message.client_id);
  const when = timeOf(message.timestamp || Date.now());
  const agent = isAgent(message);
  const li = el("li", {
    class: `msg${mine ? " mine" : ""}${agent ? " agent" : ""}${message.name === "tool" ? " tool" : ""}`,
    id: `m-${message.msg_serial}`,
    tabindex: "-1",
    dataset: { serial: String(message.msg_serial), status: message.status || "complete", author: message.client_id || "" },
  });
  if (message.name === "tool") {
    li.append(buildTool(message, author));
    return li;
  }
  const avatar = el("span", { class: "avatar", "aria-hidden": "true", text: initials(author) });
  avatar.style.setProperty("--hue", hue(message.client_id || ""));
  const head = el(
    "div",
    { class: "msg-head" },
    el("span", { class: "author", text: author }),
    agent ? el("span", { class: "tag", text: "agent" }) : null,
    el("time", { datetime: when.iso, title: new Date(message.timestamp).toLocaleString(), text: when.short }),
    el("span", { class: "badges" }, badgeList(message)),
    message.status === "streaming" && !message.cancelled_by
      ? el("button", { type: "button", class: "stop", text: "Stop", "aria-label": `Stop ${author}'s answer`, onclick: () => stop(message) })
      : null,
  );
  const main = el("div", { class: "msg-main" }, head);
  const replyTo = message.extras?.reply_to;
  if (Number.isInteger(replyTo)) {
    const target = app.store.get(replyTo);
    const label = target ? `${displayName(target.client_id)}: ${snippet(target)}` : "an earlier message";
    main.append(
      el("a", {
        class: "reply-link",
        href: `#m-${replyTo}`,
        text: `↪ ${label}`,
        onclick: (event) => {
          event.preventDefault();
          const found = document.getElementById(`m-${replyTo}`);
          if (found) {
            found.scrollIntoView({ block: "center" });
            found.focus();
          }
        },
      }),
    );
  }
  const body = el("div", { class: "body" });
  if (message.deleted) body.append(el("em", { class: "muted", text: "message deleted" }));
  else if (typeof message.data === "string") body.append(renderMarkdown(message.data));
  else body.append(el("code", { text: JSON.stringify(message.data) }));
  main.append(body, buildReactions(message), buildActions(message, mine));
  li.append(avatar, main);
  return li;
}

function snippet(message) {
  if (message.deleted) return "message deleted";
  const text = typeof message.data === "string" ? message.data : JSON.stringify(message.data);
  return text.length > 60 ? `${text.slice(0, 60)}…` : text;
}

function buildTool(message, author) {
  const data = message.data && typeof message.data === "object" ? message.data : {};
  const args = data.arguments ? JSON.stringify(data.arguments) : "";
  const result = typeof data.result === "string" ? data.result : JSON.stringify(data.result ?? "");
  return el(
    "div",
    { class: "tool-line" },
    el("span", { "aria-hidden": "true", text: "🔧 " }),
    el("strong", { text: author }),
    el("span", { text: ` used ${data.tool || "a tool"} ` }),
    el("code", { text: args }),
    el("span", { class: data.error ? "error" : "muted", text: ` → ${result}` }),
  );
}

function buildReactions(message) {
  const box = el("div", { class: "reactions" });
  for (const [name, who] of Object.entries(message.reactions || {})) {
    if (!who.length) continue;
    const mine = who.includes(app.client.clientId);
    box.append(
      el("button", {
        type: "button",
        class: "reaction",
        dataset: { focus: `reaction ${name}` },
        "aria-pressed": mine ? "true" : "false",
        "aria-label": `${name} ${who.length}: ${who.map(displayName).join(", ")}`,
        title: who.map(displayName).join(", "),
        text: `${name} ${who.length}`,
        onclick: () => react(message, name, mine),
      }),
    );
  }
  return box;
}

function buildActions(message, mine) {
  const actions = el("div", { class: "actions" });
  if (message.deleted) return actions;
  actions.append(el("button", { type: "button", text: "Reply", onclick: () => startReply(message) }));
  const picker = el("span", { class: "picker", hidden: true });
  for (const emoji of REACTIONS) {
    picker.append(el("button", { type: "button", text: emoji, "aria-label": `React with ${emoji}`, onclick: () => react(message, emoji, (message.reactions?.[emoji] || []).includes(app.client.clientId)) }));
  }
  actions.append(
    el("button", {
      type: "button",
      text: "React",
      "aria-expanded": "false",
      onclick: (event) => {
        picker.hidden = !picker.hidden;
        event.currentTarget.setAttribute("aria-expanded", String(!picker.hidden));
        if (!picker.hidden) picker.querySelector("button").focus();
      },
    }),
    picker,
  );
  picker.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      picker.hidden = true;
      actions.querySelector('[aria-expanded="true"]')?.setAttribute("aria-expanded", "false");
    }
  });
  if (mine && message.status !== "streaming" && typeof message.data === "string") {
    actions.append(el("button", { type: "button", text: "Edit", onclick: () => startEdit(message) }));
    const del = el("button", {
      type: "button",
      text: "Delete",
      onclick: () => {
        if (del.dataset.armed) remove(message);
        else {
          del.dataset.armed = "1";
          del.textContent = "Delete for everyone?";
          setTimeout(() => {
            delete del.dataset.armed;
            del.textContent = "Delete";
          }, 4000);
        }
      },
    });
    actions.append(del);
  }
  return actions;
}

async function attempt(what, promise) {
  try {
    return await promise;
  } catch (error) {
    toast(`Could not ${what}: ${error.message}`);
    return null;
  }
}

async function stop(message) {
  try {
    await app.channel.cancel(message.msg_serial, "stopped from the web UI");
  } catch (error) {
    // Without cancel-any, only your own messages and answers to yours can be stopped.
    const why = error.code === 40300 ? "only the person who asked (or an admin) can stop it" : error.message;
    toast(`Could not stop the answer: ${why}`);
  }
}

function react(message, name, remove) {
  return attempt("react", app.channel.react(message.msg_serial, name, { remove }));
}

function remove(message) {
  return attempt("delete", app.channel.delete(message.msg_serial));
}

function startReply(message) {
  app.replyTo = message.msg_serial;
  $("reply-text").textContent = `Replying to ${displayName(message.client_id)}: ${snippet(message)}`;
  $("reply-preview").hidden = false;
  $("composer-input").focus();
}

function cancelReply() {
  app.replyTo = null;
  $("reply-preview").hidden = true;
}

function startEdit(message) {
  const node = app.elements.get(message.msg_serial);
  const body = node?.querySelector(".body");
  if (!body) return;
  const input = el("textarea", { class: "editor-input", "aria-label": "Edit the message", rows: "2" });
  input.value = message.data;
  const finish = () => {
    editor.remove();
    renderMessage(app.store.get(message.msg_serial));
  };
  const save = async () => {
    const text = input.value.trim();
    // extras.edited_at marks an edit by its author (a reaction also changes updated_at).
    if (text && text !== message.data) await attempt("edit", app.channel.update(message.msg_serial, { data: text, extras: { edited_at: Date.now() } }));
    finish();
  };
  const editor = el(
    "form",
    { class: "editor", onsubmit: (event) => (event.preventDefault(), save()) },
    input,
    el("button", { type: "submit", class: "primary", text: "Save" }),
    el("button", { type: "button", text: "Cancel", onclick: finish }),
  );
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") finish();
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      save();
    }
  });
  body.replaceChildren(editor);
  input.focus();
}

async function loadEarlier() {
  if (!app.channel || !app.hasMore) return;
  const oldest = app.store.list()[0];
  const button = $("load-earlier");
  button.disabled = true;
  const scroller = $("scroller");
  const before = scroller.scrollHeight - scroller.scrollTop;
  const page = await attempt("load earlier messages", app.channel.history({ before: oldest?.msg_serial, limit: PAGE }));
  button.disabled = false;
  if (!page) return;
  for (const message of page.messages) {
    if (!app.store.get(message.msg_serial)) renderMessage(app.store.put(message));
  }
  app.hasMore = page.has_more;
  button.hidden = !app.hasMore;
  scroller.scrollTop = scroller.scrollHeight - before;
}

// ---------------------------------------------------------------------- composer

async function send(event) {
  event.preventDefault();
  const input = $("composer-input");
  const text = input.value.trim();
  if (!text || !app.channel) return;
  input.value = "";
  autosize();
  const extras = app.replyTo !== null ? { reply_to: app.replyTo } : undefined;
  cancelReply();
  const serial = await attempt("send", app.channel.publish(text, { extras }));
  if (serial === null) input.value = text;
}

function autosize() {
  const input = $("composer-input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

function setupComposer() {
  const input = $("composer-input");
  $("composer").addEventListener("submit", send);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    } else if (event.key === "Escape") cancelReply();
  });
  input.addEventListener("input", () => {
    autosize();
    const now = Date.now();
    if (app.channel && input.value.trim() && now - app.lastTypingSent > TYPING_EVERY_MS) {
      app.lastTypingSent = now;
      app.channel.signal("typing", { name: app.name });
    }
  });
  $("reply-cancel").addEventListener("click", cancelReply);
  $("load-earlier").addEventListener("click", loadEarlier);
  $("scroller").addEventListener("scroll", () => {
    if ($("scroller").scrollTop < 20 && app.hasMore && !$("load-earlier").disabled) loadEarlier();
  });
}

// ---------------------------------------------------------------------- start

function setupJoin() {
  $("join-name").value = app.name;
  $("join-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("join-name").value.trim();
    if (!name) return;
    if (app.client && clientIdFor(name) !== app.client.clientId) {
      await leaveRoom();
      app.client.close();
      app.client = null;
      app.everConnected = false;
    }
    app.name = name;
    localStorage.setItem(NAME_KEY, name);
    $("join-error").textContent = "";
    await navigate();
  });
  $("change-name").addEventListener("click", () => {
    show("join");
    $("join-name").focus();
  });
  $("new-room-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("new-room-name").value.trim();
    if (name) location.hash = `#/room/${name}`;
  });
}

function setupSideToggle() {
  const button = $("side-toggle");
  button.addEventListener("click", () => {
    const open = document.body.classList.toggle("side-open");
    button.setAttribute("aria-expanded", String(open));
  });
}

setupTheme();
setupJoin();
setupComposer();
setupSideToggle();
setupSide(app);
window.addEventListener("hashchange", navigate);
navigate();
window.roomcastApp = app; // for debugging in the console
