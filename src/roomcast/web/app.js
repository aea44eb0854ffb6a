// The roomcast web UI: join with a name, pick a room, chat with people and agents.
// Everything it asks of the server goes through roomcast.js, the browser client (the
// protocol, and `client.http` for the HTTP API); the other modules each draw one part.

import { cancelReply, setupComposer } from "./composer.js";
import { isNearEnd, renderMessage, scrollToEnd, setupMessageList } from "./message-list.js";
import { Client, MessageStore, authUrlCallback } from "./roomcast.js";
import { renderRoomList } from "./rooms.js";
import { renderSide, setupSide } from "./side.js";
import { $, app, clearToast, saveName, toast } from "./state.js";
import { setupTheme } from "./theme.js";
import { onSignal, renderTyping } from "./typing.js";

const REWIND = 50;

const authMeta = document.querySelector('meta[name="roomcast-auth-url"]')?.content || "";
const AUTH_URL = authMeta.startsWith("{{") ? "" : authMeta;

function clientIdFor(name) {
  const id = name.trim().replace(/[^A-Za-z0-9_.-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 60);
  return id || "guest";
}

// ---------------------------------------------------------------------- connection

function showConnection({ state, resumed, reason }) {
  const box = $("conn-state");
  let shown = state;
  if (state === "connected") {
    shown = app.everConnected ? (resumed ? "resumed" : "reconnected") : "connected";
    app.everConnected = true;
  } else if (state === "failed" && !app.everConnected) {
    shown = "idle"; // a join refused: the join form says why
  }
  const labels = { idle: "not connected", connecting: "connecting…", reconnecting: "reconnecting…", failed: "disconnected", closed: "closed" };
  box.dataset.state = shown;
  box.textContent = labels[shown] || shown;
  box.title = reason ? `${box.textContent}: ${reason}` : box.textContent; // the text, where only the dot shows
}

async function connect() {
  if (app.client) return app.client;
  const clientId = clientIdFor(app.name);
  const client = new Client({ clientId, authCallback: AUTH_URL ? authUrlCallback(AUTH_URL, clientId) : null });
  app.client = client;
  client.on("state", showConnection);
  // A refused join is said on the join form; a connection lost for good, in a toast.
  client.on("failed", (error) => app.everConnected && toast(`Disconnected: ${error.message}`));
  client.on("capability", rerenderMessages);
  showConnection({ state: "connecting" });
  try {
    await client.connect();
  } catch (error) {
    app.client = null;
    throw error;
  }
  clearToast();
  loadAgents(client);
  return client;
}

async function loadAgents(client) {
  try {
    app.configuredAgents = await client.http.agents();
  } catch (error) {
    if (!error.status) app.configuredAgents = []; // an error answer keeps the list we had
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
  await renderRoomList();
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
  app.mentionHints = [];
  $("mention-hint").hidden = true;
  cancelReply();
  $("messages").replaceChildren();
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

/** What the connection may do changed (a renewed token): Stop buttons follow it. */
function rerenderMessages() {
  if (app.channel) for (const message of app.store.list()) renderMessage(message);
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
    saveName(name);
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
setupMessageList();
setupSideToggle();
setupSide(app);
window.addEventListener("hashchange", navigate);
navigate();
window.roomcastApp = app; // for debugging in the console
