// The side panel: who is here (people and agents), the room's agents, polls and boards.
// Polls and boards are the channel's live objects (docs/protocol.md §5), the same ones the
// agents' tools change, so a vote cast by an agent shows in the same chart.

import { el, keepFocus } from "./dom.js";
import { patternMatches } from "./roomcast.js";

const $ = (id) => document.getElementById(id);

/** Wire the panel's forms once; they act on whatever room is open. */
export function setupSide(app) {
  $("poll-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const question = $("poll-question").value;
    const options = $("poll-options").value.split(/\n|,/);
    try {
      await app.channel.polls.create(question, options);
      $("poll-question").value = "";
      $("poll-options").value = "";
      event.target.closest("details").open = false;
    } catch (error) {
      app.toast(`Could not create the poll: ${error.message}`);
    }
  });
  $("board-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await app.channel.boards.create($("board-title").value);
      $("board-title").value = "";
    } catch (error) {
      app.toast(`Could not create the board: ${error.message}`);
    }
  });
  $("add-agent-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("add-agent").value;
    if (name) await changeAgents(app, name, true);
  });
}

export function renderSide(app) {
  keepFocus(document.getElementById("side"), () => {
    renderPeople(app);
    renderAgents(app);
    renderPolls(app);
    renderBoards(app);
  });
}

// ---------------------------------------------------------------------- people

function renderPeople(app) {
  const people = new Map(); // client_id -> {name, agent, status, connections}
  for (const member of app.channel.presence.list()) {
    const data = member.data && typeof member.data === "object" ? member.data : {};
    const entry = people.get(member.client_id) || { connections: 0 };
    entry.connections += 1;
    entry.name = typeof data.name === "string" ? app.shownName(member.client_id, data.name) : entry.name || member.client_id;
    entry.agent = app.isAgentId(member.client_id); // not what its presence says of itself
    if (entry.agent) entry.status = typeof data.status === "string" ? data.status : "idle";
    people.set(member.client_id, entry);
  }
  const sorted = [...people.entries()].sort(([, a], [, b]) => Number(a.agent) - Number(b.agent) || a.name.localeCompare(b.name));
  $("people").replaceChildren(
    ...sorted.map(([clientId, person]) =>
      el(
        "li",
        { class: `person${person.agent ? " agent" : ""}`, dataset: { clientId } },
        el("span", { class: "dot", "aria-hidden": "true" }),
        el("span", { class: "name", text: person.name }),
        clientId === app.client.clientId ? el("span", { class: "muted", text: " (you)" }) : null,
        person.agent ? el("span", { class: `status status-${person.status}`, text: person.status }) : null,
        person.connections > 1 ? el("span", { class: "muted", text: ` · ${person.connections} tabs`, title: "connections" }) : null,
      ),
    ),
  );
  if (!sorted.length) $("people").replaceChildren(el("li", { class: "muted", text: "Nobody yet." }));
}

// ---------------------------------------------------------------------- agents

/** The names in `root.agents`, or null while the room has no list (every matching agent). */
function roomAgentList(app) {
  const objects = app.channel.objects;
  const ref = objects.ref(objects.entries("root")?.agents);
  const entries = ref ? objects.entries(ref) : null;
  return entries ? { ref, names: Object.keys(entries), entries } : null;
}

/** The configured agents that serve the open room (their `rooms` match it): those that
 * can be in it. */
function servingAgents(app) {
  return app.configuredAgents.filter((agent) => (agent.rooms || []).some((p) => patternMatches(p, app.channel.name))).map((agent) => agent.name);
}

/** Until someone changes `root.agents`, every agent that serves the room is in it. */
const defaultAgents = servingAgents;

/** The names of the agents that answer in the open room. */
function agentsInRoom(app) {
  const list = roomAgentList(app);
  return list ? list.names : defaultAgents(app);
}

/** Add (`add`) or remove agent `name` from the open room's `root.agents`. */
async function changeAgents(app, name, add) {
  const objects = app.channel.objects;
  const entry = { added_by: app.client.clientId, ts: Date.now() };
  try {
    let list = roomAgentList(app);
    if (!list) {
      // The first change makes the list, starting from the agents that were answering.
      const start = Object.fromEntries(defaultAgents(app).map((agent) => [agent, entry]));
      const ref = await objects.createMap(start);
      await objects.set("root", "agents", { object_id: ref });
      list = { ref };
    }
    if (add) await objects.set(list.ref, name, entry);
    else await objects.remove(list.ref, name);
  } catch (error) {
    app.toast(`Could not change the room's agents: ${error.message}`);
  }
}

/** What answers for a configured agent: its model, or that it has none (a script). */
function agentDetail(configured) {
  if (!configured) return "not configured here";
  if (configured.provider === "scripted") return "scripted (no model)";
  return configured.model ? `${configured.provider} · ${configured.model}` : configured.provider;
}

/** "@a to ask", "@a or @b to ask", "@a, @b or @c to ask"; "" for no agents. */
function askHint(names) {
  const mentions = names.map((name) => `@${name}`);
  if (!mentions.length) return "";
  const last = mentions.pop();
  return `${mentions.length ? `${mentions.join(", ")} or ` : ""}${last} to ask`;
}

function renderAgents(app) {
  const inRoom = agentsInRoom(app);
  $("agents").replaceChildren(
    ...inRoom.map((name) => {
      const configured = app.configuredAgents.find((agent) => agent.name === name);
      const note = typeof configured?.note === "string" && configured.note ? configured.note : null;
      return el(
        "li",
        { class: "agent-row", dataset: { agent: name }, title: note },
        el("span", { class: "name", text: name }),
        el("span", { class: "muted detail", text: ` ${agentDetail(configured)}` }),
        el("button", { type: "button", class: "small", "aria-label": `Remove ${name} from this room`, text: "Remove", onclick: () => changeAgents(app, name, false) }),
        note ? el("span", { class: "note", text: note }) : null,
      );
    }),
  );
  if (!inRoom.length) $("agents").replaceChildren(el("li", { class: "muted", text: "No agents in this room." }));
  const addable = servingAgents(app).filter((name) => !inRoom.includes(name));
  const select = $("add-agent");
  const chosen = select.value; // a redraw keeps the choice someone is about to add
  select.replaceChildren(...addable.map((name) => el("option", { value: name, text: name })));
  if (addable.includes(chosen)) select.value = chosen;
  $("add-agent-form").hidden = !addable.length;
  const ask = askHint(inRoom);
  $("composer-input").placeholder = ask ? `Message… (${ask})` : "Message…";
  renderMentionHint(app, inRoom);
}

// ---------------------------------------------------------------------- mentions

/** Whether `text` @mentions `name` (any case, a whole name), as the agents read mentions. */
function mentions(text, name) {
  const escaped = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`(?<![A-Za-z0-9_.@-])@${escaped}(?![A-Za-z0-9_-])`, "i").test(text);
}

/** After sending `text`: a hint for each configured agent it @mentions that is not in the
 * room (it will not answer), with a button that adds it when it can be. */
export function hintMentions(app, text) {
  const inRoom = agentsInRoom(app);
  app.mentionHints = app.configuredAgents.map((agent) => agent.name).filter((name) => !inRoom.includes(name) && mentions(text, name));
  renderMentionHint(app, inRoom);
}

function renderMentionHint(app, inRoom) {
  const names = (app.mentionHints || []).filter((name) => !inRoom.includes(name));
  app.mentionHints = names;
  const serving = servingAgents(app);
  const box = $("mention-hint");
  box.replaceChildren(
    ...names.map((name) =>
      el(
        "span",
        { class: "hint-line", dataset: { agent: name } },
        serving.includes(name)
          ? [`${name} is not in this room: `, el("button", { type: "button", class: "link", "aria-label": `Add ${name} to this room`, text: "Add it", onclick: () => changeAgents(app, name, true) })]
          : `${name} does not answer in this room`,
      ),
    ),
  );
  box.hidden = !names.length;
}

// ---------------------------------------------------------------------- polls

function renderPolls(app) {
  const box = $("polls");
  if (!app.channel.objects.ready) {
    box.replaceChildren(el("p", { class: "muted", text: "Live objects are not available here." }));
    return;
  }
  const polls = app.channel.polls.list();
  const me = app.client.clientId;
  box.replaceChildren(
    ...polls.map((poll) => {
      const total = Object.values(poll.counts).reduce((a, b) => a + b, 0);
      const mine = poll.votes[me];
      const rows = Object.entries(poll.options).map(([optionId, label]) => {
        const count = poll.counts[optionId] || 0;
        const share = total ? Math.round((count / total) * 100) : 0;
        const voters = Object.entries(poll.votes)
          .filter(([, choice]) => choice === optionId)
          .map(([who]) => app.displayName(who));
        return el(
          "li",
          { class: `option${mine === optionId ? " chosen" : ""}`, dataset: { option: optionId } },
          el(
            "button",
            {
              type: "button",
              class: "vote",
              id: `vote-${poll.poll_id}-${optionId}`,
              disabled: poll.closed,
              "aria-pressed": mine === optionId ? "true" : "false",
              "aria-label": `Vote ${label}: ${count} vote${count === 1 ? "" : "s"}`,
              title: voters.join(", "),
              onclick: () => vote(app, poll, optionId, mine === optionId),
            },
            el("span", { class: "label", text: label }),
            el("span", { class: "count", text: String(count) }),
            el("span", { class: "bar", "aria-hidden": "true", style: `width:${share}%` }),
          ),
        );
      });
      return el(
        "article",
        { class: "poll", dataset: { poll: poll.poll_id } },
        el("h3", { text: poll.question }),
        el("ul", { class: "options" }, rows),
        el(
          "p",
          { class: "muted poll-foot" },
          `${total} vote${total === 1 ? "" : "s"}${poll.closed ? " · closed" : ""}`,
          !poll.closed && poll.created_by === me ? el("button", { type: "button", class: "link", text: "close poll", onclick: () => app.channel.polls.close(poll.poll_id).catch((e) => app.toast(e.message)) }) : null,
        ),
      );
    }),
  );
  if (!polls.length) box.replaceChildren(el("p", { class: "muted", text: "No polls yet." }));
}

async function vote(app, poll, optionId, again) {
  try {
    if (again) await app.channel.polls.unvote(poll.poll_id);
    else await app.channel.polls.vote(poll.poll_id, optionId);
  } catch (error) {
    app.toast(`Could not vote: ${error.message}`);
  }
}

// ---------------------------------------------------------------------- boards

function renderBoards(app) {
  const box = $("boards");
  if (!app.channel.objects.ready) {
    box.replaceChildren();
    return;
  }
  const boards = app.channel.boards.list();
  // Keep what someone is typing into a board's "add" box across re-renders.
  const drafts = new Map([...box.querySelectorAll("input[data-board]")].map((input) => [input.dataset.board, input.value]));
  box.replaceChildren(
    ...boards.map((board) => {
      const input = el("input", { "aria-label": `Add to ${board.title}`, placeholder: "Add an item", dataset: { board: board.board_id }, maxlength: "300", required: true });
      input.value = drafts.get(board.board_id) || "";
      const form = el(
        "form",
        {
          class: "inline-form",
          onsubmit: async (event) => {
            event.preventDefault();
            const text = input.value;
            input.value = ""; // the board re-renders when the item arrives; keep no draft
            try {
              await app.channel.boards.addItem(board.board_id, text);
            } catch (error) {
              input.value = text;
              app.toast(`Could not add: ${error.message}`);
            }
          },
        },
        input,
        el("button", { type: "submit", text: "Add" }),
      );
      return el(
        "article",
        { class: "board", dataset: { board: board.board_id } },
        el("h3", { text: board.title }),
        el(
          "ul",
          { class: "items" },
          board.items.map((item) => {
            const check = el("input", { type: "checkbox", id: `item-${item.item_id}`, checked: Boolean(item.done) });
            check.addEventListener("change", () => app.channel.boards.setDone(board.board_id, item.item_id, check.checked).catch((e) => app.toast(e.message)));
            return el(
              "li",
              { class: item.done ? "done" : "" },
              check,
              el("label", { for: `item-${item.item_id}`, text: String(item.text ?? "") }),
              item.author ? el("span", { class: "muted", text: ` · ${app.displayName(item.author)}` }) : null,
              el("button", { type: "button", class: "icon-button small", "aria-label": `Remove "${item.text}"`, text: "✕", onclick: () => app.channel.boards.removeItem(board.board_id, item.item_id).catch((e) => app.toast(e.message)) }),
            );
          }),
        ),
        form,
      );
    }),
  );
  if (!boards.length) box.replaceChildren(el("p", { class: "muted", text: "No boards yet." }));
}
