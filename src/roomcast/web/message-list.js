// The message list: each message with its author, time, Markdown body, reactions and
// actions, kept in serial order and updated in place; earlier pages on demand.

import { startReply, snippet } from "./composer.js";
import { el, keepFocus, patchChildren } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { $, app, attempt, displayName, isAgentId, toast } from "./state.js";

const PAGE = 50;
const REST_MS = 300;
const REACTIONS = ["👍", "❤️", "😂", "🎉", "👀"];

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

/** Only the server's agents are shown as agents: a message's `extras.agent` says nothing of
 * its author unless the author is one of them. */
function isAgent(message) {
  return isAgentId(message.client_id);
}

/** Whether the list is scrolled to (about) its end. */
export function isNearEnd() {
  const scroller = $("scroller");
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
}

export function scrollToEnd() {
  const scroller = $("scroller");
  scroller.scrollTop = scroller.scrollHeight;
}

/** The answer a tool line belongs in: the message `extras.answer` names, by the same
 * author, if the page has it; null for a tool line shown on its own. */
function toolAnswer(message) {
  if (message.name !== "tool" || !Number.isInteger(message.extras?.answer) || !Number.isInteger(message.extras?.at)) return null;
  const answer = app.store.get(message.extras.answer);
  return answer && answer.client_id === message.client_id && answer.name !== "tool" ? answer : null;
}

/** The tool lines that belong in `answer`, in the order they ran. */
function toolsOf(answer) {
  return app.store
    .list()
    .filter((other) => other.name === "tool" && other.extras?.answer === answer.msg_serial && toolAnswer(other) === answer)
    .sort((a, b) => a.extras.at - b.extras.at || a.msg_serial - b.msg_serial);
}

/** Show `message`: a new item in serial order, or the one shown updated in place. A tool
 * line of an answer the page has is shown inside that answer instead. */
export function renderMessage(message) {
  if (message.name === "agent.silent") return; // an agent's "no answer" marker, for streams to end
  const answer = toolAnswer(message);
  if (answer) {
    app.elements.get(message.msg_serial)?.remove();
    app.elements.delete(message.msg_serial);
    renderMessage(answer);
    return;
  }
  const existing = app.elements.get(message.msg_serial);
  const node = buildMessage(message);
  if (existing) {
    // Keep an open editor and the focus where they are; update the item in place.
    if (existing.querySelector(".editor")) return;
    keepOpen(existing, node);
    keepFocus(existing, () => {
      existing.className = node.className;
      Object.assign(existing.dataset, node.dataset);
      patchChildren(existing, node);
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

/** A reaction picker the person opened stays open when its message is shown again. */
function keepOpen(existing, node) {
  const picker = node.querySelector(".picker");
  if (!picker || !existing.querySelector(".picker:not([hidden])")) return;
  picker.hidden = false;
  node.querySelector(".actions [aria-expanded]")?.setAttribute("aria-expanded", "true");
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
    message.status === "streaming" && !message.cancelled_by && canStop(message)
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
  else if (typeof message.data === "string") body.append(...textWithTools(message));
  else body.append(el("code", { text: JSON.stringify(message.data) }));
  main.append(body, buildReactions(message), buildActions(message, mine));
  li.append(avatar, main);
  return li;
}

/** An answer's text, with each of its tool lines where the tool ran: `extras.at` counts
 * code points (as Python does), and JS strings are UTF-16, so split an array of them. */
function textWithTools(message) {
  const tools = toolsOf(message);
  if (!tools.length) return [renderMarkdown(message.data)];
  const chars = Array.from(message.data);
  const parts = [];
  let from = 0;
  for (const tool of tools) {
    const at = Math.min(Math.max(tool.extras.at, from), chars.length);
    if (at > from) parts.push(renderMarkdown(chars.slice(from, at).join("")));
    parts.push(buildTool(tool, displayName(tool.client_id)));
    from = at;
  }
  if (from < chars.length) parts.push(renderMarkdown(chars.slice(from).join("")));
  return parts;
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
  // A control outlives its render when nothing it shows changed: it acts on the message as
  // it is now, and finds its picker beside it.
  const latest = () => app.store.get(message.msg_serial) ?? message;
  actions.append(el("button", { type: "button", text: "Reply", onclick: () => startReply(latest()) }));
  const picker = el("span", { class: "picker", hidden: true });
  for (const emoji of REACTIONS) {
    picker.append(el("button", { type: "button", text: emoji, "aria-label": `React with ${emoji}`, onclick: () => react(message, emoji, (latest().reactions?.[emoji] || []).includes(app.client.clientId)) }));
  }
  actions.append(
    el("button", {
      type: "button",
      text: "React",
      "aria-expanded": "false",
      onclick: (event) => {
        const button = event.currentTarget;
        const shown = button.parentElement.querySelector(".picker");
        shown.hidden = !shown.hidden;
        button.setAttribute("aria-expanded", String(!shown.hidden));
        if (!shown.hidden) shown.querySelector("button").focus();
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
    actions.append(el("button", { type: "button", text: "Edit", onclick: () => startEdit(latest()) }));
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

/** Whether this connection may stop `message` (docs/protocol.md §6): with `cancel-any`, or
 * with `cancel-own` when it is ours or answers one of ours (`extras.reply_to`). */
function canStop(message) {
  const { client, channel } = app;
  if (client.can("cancel-any", channel.name)) return true;
  if (!client.can("cancel-own", channel.name)) return false;
  if (message.client_id === client.clientId) return true;
  const asked = Number.isInteger(message.extras?.reply_to) ? app.store.get(message.extras.reply_to) : null;
  return Boolean(asked) && asked.client_id === client.clientId;
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

/** Wire "Load earlier messages" and scrolling to the top once. */
export function setupMessageList() {
  $("load-earlier").addEventListener("click", loadEarlier);
  // Load when the list comes to rest at the top: pressing the button scrolls it into view
  // first, and that scroll must not load a second page.
  let resting = null;
  $("scroller").addEventListener("scroll", () => {
    clearTimeout(resting);
    resting = setTimeout(() => {
      if ($("scroller").scrollTop < 20 && app.hasMore && !$("load-earlier").disabled) loadEarlier();
    }, REST_MS);
  });
}
