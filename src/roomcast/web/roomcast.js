// roomcast.js: a browser client for roomcast's wire protocol (docs/protocol.md, version 1)
// and its HTTP API (docs/http.md).
//
// Plain ES modules with no dependencies; this one names the public API, and the modules of
// `roomcast/` hold it: `link.js` (the connection), `capability.js`, `channel.js`, `presence.js`,
// `objects.js` (live objects), `conventions.js` (polls and boards), `messages.js` (a message
// list), `http.js` (the HTTP API), `tokens.js`, `backoff.js`, `errors.js`, `emitter.js`, and
// `chat-transport.js` (the AI SDK's ChatTransport on a room, docs/ai-sdk.md) with
// `answering.js` (who answers a message) and `replies.js` (answers as UI message chunks).
// Its TypeScript declarations are `roomcast.d.ts`, next to it.
//
// It keeps what must outlive a socket: the resume key, the channels and their positions
// (the last serial each delivered), the requests not yet answered. When the socket drops it
// reconnects with backoff, resumes (`?resume=`), re-attaches every channel with
// `from_serial` and re-sends what was never answered, so nothing is lost or doubled. It
// keeps a channel's presence, live objects (maps, counters, polls, boards) current, and
// renews a token (the `auth` action) before it expires. `client.http` calls the HTTP API
// with the same credentials.
//
//   import { Client } from "/static/roomcast.js";
//   const client = new Client({ clientId: "alice" });
//   const lunch = client.channel("room:lunch");
//   lunch.on("event", (event) => console.log(event.serial, event.type, event.data));
//   await lunch.attach({ rewind: 50 });
//   await lunch.publish("tacos?");
//
// See docs/web.md for the whole API.

export { Backoff } from "./roomcast/backoff.js";
export { Capability, patternMatches } from "./roomcast/capability.js";
export { Channel, newPublishId } from "./roomcast/channel.js";
export { RoomcastChatTransport, roomOf } from "./roomcast/chat-transport.js";
export { Boards, Polls } from "./roomcast/conventions.js";
export { RoomcastError } from "./roomcast/errors.js";
export { HttpApi } from "./roomcast/http.js";
export { CLOSE_AUTH, Client } from "./roomcast/link.js";
export { MessageStore } from "./roomcast/messages.js";
export { LiveObjects } from "./roomcast/objects.js";
export { Presence } from "./roomcast/presence.js";
export { authUrlCallback, renewDelay, tokenCapability, tokenExpiry } from "./roomcast/tokens.js";
