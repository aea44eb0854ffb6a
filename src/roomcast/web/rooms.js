// The home page's room list: the `room:` channels you may read, with how many are in each.

import { el } from "./dom.js";
import { $, app } from "./state.js";

const PREFIX = "room:";

/** The rooms; an error answer of the server lists none, as an empty list does. */
async function roomChannels() {
  try {
    return await app.client.http.channels({ prefix: PREFIX, limit: 200 });
  } catch (error) {
    if (error.status) return [];
    throw error;
  }
}

/** Fill the room list: a link per room, with how many are in it. */
export async function renderRoomList() {
  const list = $("room-list");
  list.replaceChildren(el("li", { class: "muted", text: "Loading…" }));
  try {
    const items = await roomChannels();
    list.replaceChildren(
      ...items.map((item) => {
        const short = item.channel.slice(PREFIX.length);
        return el("li", {}, el("a", { href: `#/room/${short}`, text: `# ${short}` }), el("span", { class: "muted", text: item.occupancy ? ` · ${item.occupancy} here` : "" }));
      }),
    );
    if (!items.length) list.replaceChildren(el("li", { class: "muted", text: "No rooms yet: create one." }));
  } catch (error) {
    list.replaceChildren(el("li", { class: "error", text: `Could not list rooms: ${error.message}` }));
  }
}
