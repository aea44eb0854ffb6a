// TypeScript declarations of roomcast.js, the browser client of roomcast's wire protocol
// (docs/protocol.md) and HTTP API (docs/http.md), with the AI SDK chat transport
// (docs/ai-sdk.md). Plain types: the library has no dependencies, and
// `RoomcastChatTransport` is assignable to the `ai` package's `ChatTransport<UIMessage>`.

type Listener<A extends unknown[]> = (...args: A) => void;
type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** An operation of a capability (docs/protocol.md §6). */
export type Operation =
  | "subscribe"
  | "publish"
  | "history"
  | "presence"
  | "signal"
  | "annotate"
  | "object-subscribe"
  | "object-publish"
  | "update-own"
  | "update-any"
  | "delete-own"
  | "delete-any"
  | "cancel-own"
  | "cancel-any"
  | "agent-admin"
  | (string & {});

/** A message's rolled-up state (docs/protocol.md §3). */
export interface Message {
  msg_serial: number;
  id: string | null;
  client_id: string | null;
  name: string;
  data: unknown;
  extras: Record<string, unknown> | null;
  timestamp: number;
  updated_at: number | null;
  status: "streaming" | "complete" | "cancelled" | "failed";
  deleted: boolean;
  cancelled_by: string | null;
  reactions: Record<string, string[]>;
}

/** The type of a channel's event. */
export type EventType = "create" | "append" | "update" | "delete" | "cancel" | "annotation" | "object";

/** An `event` message: one change of a channel, in serial order (docs/protocol.md §2). */
export interface ChannelEvent {
  action: "event";
  channel: string;
  serial: number;
  type: EventType;
  msg_serial?: number;
  id?: string | null;
  client_id: string | null;
  name?: string;
  data?: unknown;
  extras?: Record<string, unknown>;
  streaming?: boolean;
  status?: Message["status"];
  op?: Record<string, unknown>;
  timestamp: number;
  [field: string]: unknown;
}

export interface PresenceMember {
  client_id: string;
  connection_id: string;
  data: unknown;
  timestamp: number;
}

/** The `attached` reply; `resumed: false` means: rebuild from its snapshot. */
export interface Attached {
  action: "attached";
  channel: string;
  serial: number;
  epoch: string;
  resumed: boolean;
  messages?: Message[];
  presence: PresenceMember[];
  objects?: { serial: number; objects: Record<string, ObjectState> };
  [field: string]: unknown;
}

/** The `connected` message. */
export interface Connected {
  action: "connected";
  connection_id: string;
  client_id: string;
  resume_key: string;
  resumed: boolean;
  heartbeat_s: number;
  limits: Record<string, number>;
  capability?: Record<string, Operation[]>;
  [field: string]: unknown;
}

export interface SignalMessage {
  action: "signal";
  channel: string;
  client_id: string | null;
  name: string;
  data: unknown;
  [field: string]: unknown;
}

export interface Discontinuity {
  action: "discontinuity";
  channel: string;
  reason: string;
}

/** What the server refuses, as an exception: `code` (docs/protocol.md §8), `status` for HTTP. */
export class RoomcastError extends Error {
  constructor(code: number, message: string, channel?: string | null, status?: number | null);
  code: number;
  channel: string | null;
  status: number | null;
}

/** A small event emitter: `on(name, fn)` returns a function that removes the listener. */
declare class Emitter<Events extends Record<string, unknown[]>> {
  on<K extends keyof Events & string>(name: K, fn: Listener<Events[K]>): () => void;
  emit<K extends keyof Events & string>(name: K, ...args: Events[K]): void;
}

/** Exponential backoff with full jitter. */
export class Backoff {
  constructor(options?: { initial?: number; maximum?: number; multiplier?: number });
  initial: number;
  maximum: number;
  multiplier: number;
  attempts: number;
  nextDelay(): number;
  reset(): void;
}

/** Whether a channel pattern matches `channel` (docs/protocol.md §6). */
export function patternMatches(pattern: string, channel: string): boolean;

/** A capability: pattern → operations (`*` for all of them). */
export class Capability {
  constructor(rules: Record<string, Operation[]> | null);
  rules: Record<string, Operation[]>;
  allows(operation: Operation, channel: string): boolean;
}

/** A token's `exp` in seconds, read without verifying it; null if it has none. */
export function tokenExpiry(token: string): number | null;
/** A token's `capability` claim; null if it has none. */
export function tokenCapability(token: string): Record<string, Operation[]> | null;
/** Seconds until a token with `remaining` seconds of life should be renewed. */
export function renewDelay(remaining: number): number;
/** An `authCallback` that asks a site's `authUrl` for a token (docs/web.md). */
export function authUrlCallback(authUrl: string, clientId: string): () => Promise<string>;

/** The WebSocket class a Client opens its connections with (the global one by default). */
export type WebSocketClass = new (url: string) => {
  readonly readyState: number;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
};

export interface ClientOptions {
  /** Default: this page's server, `/v1/ws`. */
  url?: string;
  clientId?: string | null;
  token?: string | null;
  authCallback?: (() => Promise<string>) | null;
  backoff?: Backoff | null;
  /** Where `client.http` sends its calls; default: the server of `url`. */
  httpUrl?: string | null;
  /** Default: `globalThis.WebSocket` (e.g. the `ws` package's on a Node.js without one). */
  WebSocket?: WebSocketClass | null;
}

export type ClientState = "connecting" | "connected" | "reconnecting" | "failed" | "closed";

export const CLOSE_AUTH: 4001;

/** A connection to a roomcast server that reconnects and resumes by itself. */
export class Client extends Emitter<{
  state: [{ state: ClientState; resumed: boolean; reason?: string }];
  connected: [Connected];
  capability: [Capability | null];
  error: [{ action: "error"; code: number; message: string }];
  failed: [RoomcastError];
}> {
  constructor(options?: ClientOptions);
  url: string;
  http: HttpApi;
  clientId: string | null;
  token: string | null;
  state: ClientState;
  connected: Connected | null;
  capability: Capability | null;
  connectionId: string | null;
  resumed: boolean;
  connectTimeoutMs: number;
  readonly isConnected: boolean;
  connect(): Promise<Connected>;
  channel(name: string): Channel;
  can(operation: Operation, channel: string): boolean;
  request(message: Record<string, unknown>, options?: { resend?: boolean }): Promise<Record<string, unknown>>;
  send(message: Record<string, unknown>): void;
  close(): void;
  renew(token: string): Promise<void>;
}

/** An idempotency key for a publish. */
export function newPublishId(): string;

/** One channel: attach and re-attach from its position, publish and change messages. */
export class Channel extends Emitter<{
  attached: [Attached];
  event: [ChannelEvent];
  presence: [Presence, unknown?];
  signal: [SignalMessage];
  objects: [LiveObjects, string | null];
  discontinuity: [Discontinuity];
  error: [RoomcastError];
}> {
  constructor(client: Client, name: string);
  client: Client;
  name: string;
  state: "initialized" | "attaching" | "attached" | "detached" | "failed";
  serial: number | null;
  epoch: string | null;
  attached: Attached | null;
  presence: Presence;
  objects: LiveObjects;
  polls: Polls;
  boards: Boards;
  /** The event types asked for at attach (kept for every re-attach); null: all. */
  types: EventType[] | null;
  attach(options?: { rewind?: number | null; types?: EventType[] | null }): Promise<Attached>;
  detach(): Promise<void>;
  publish(data: unknown, options?: { name?: string; extras?: Record<string, unknown>; streaming?: boolean; id?: string }): Promise<number>;
  append(msgSerial: number, data: string): Promise<number | null>;
  update(msgSerial: number, changes: { data?: unknown; extras?: Record<string, unknown>; status?: Message["status"] }): Promise<number | null>;
  delete(msgSerial: number): Promise<number | null>;
  cancel(msgSerial: number, reason?: string): Promise<number | null>;
  react(msgSerial: number, name: string, options?: { remove?: boolean }): Promise<number | null>;
  signal(name: string, data?: unknown): void;
  history(options?: { before?: number | null; after?: number | null; limit?: number }): Promise<{ messages: Message[]; has_more: boolean }>;
}

/** Who is here, kept current; entered again after a reconnect. */
export class Presence {
  constructor(channel: Channel);
  channel: Channel;
  members: Map<string, PresenceMember>;
  enter(data?: unknown): Promise<void>;
  update(data?: unknown): Promise<void>;
  leave(): Promise<void>;
  list(): PresenceMember[];
}

export type ObjectState = { type: "map"; entries: Record<string, JsonValue> } | { type: "counter"; value: number };

/** A channel's live objects (docs/protocol.md §5). */
export class LiveObjects {
  constructor(channel: Channel);
  channel: Channel;
  state: Record<string, ObjectState> | null;
  serial: number | null;
  readonly ready: boolean;
  entries(objectId: string): Record<string, JsonValue> | null;
  ref(value: unknown): string | null;
  counter(objectId: string): number | null;
  apply(op: Record<string, unknown>): Promise<Record<string, unknown>>;
  createMap(entries?: Record<string, JsonValue>): Promise<string>;
  createCounter(value?: number): Promise<string>;
  set(objectId: string, key: string, value: JsonValue): Promise<Record<string, unknown>>;
  remove(objectId: string, key: string): Promise<Record<string, unknown>>;
  increment(objectId: string, amount?: number): Promise<Record<string, unknown>>;
  index(key: string): Promise<string>;
}

export interface Poll {
  poll_id: string;
  question: string;
  options: Record<string, string>;
  votes: Record<string, string>;
  counts: Record<string, number>;
  closed: boolean;
  created_by: string | null;
}

/** Polls of `root.polls`, per docs/protocol.md §5. */
export class Polls {
  constructor(channel: Channel);
  list(): Poll[];
  get(pollId: string): Poll | null;
  create(question: string, labels: string[]): Promise<string>;
  vote(pollId: string, optionId: string): Promise<void>;
  unvote(pollId: string): Promise<void>;
  close(pollId: string): Promise<Record<string, unknown>>;
}

export interface Board {
  board_id: string;
  title: string;
  items: { item_id: string; text: string; author?: string; ts?: number; done?: boolean }[];
}

/** Boards of `root.boards`, per docs/protocol.md §5. */
export class Boards {
  constructor(channel: Channel);
  list(): Board[];
  get(boardId: string): Board | null;
  create(title: string): Promise<string>;
  addItem(boardId: string, text: string): Promise<string>;
  setDone(boardId: string, itemId: string, done?: boolean): Promise<void>;
  removeItem(boardId: string, itemId: string): Promise<Record<string, unknown>>;
}

/** A message list kept current from `attached` and events. */
export class MessageStore {
  messages: Map<number, Message>;
  reset(messages?: Message[]): void;
  put(message: Partial<Message> & { msg_serial: number }): Message;
  get(msgSerial: number): Message | null;
  list(): Message[];
  apply(event: ChannelEvent): Message | null;
}

/** One agent of `GET /v1/agents`. */
export interface AgentInfo {
  name: string;
  provider: string;
  model: string;
  policy: "mention" | "auto" | "always" | (string & {});
  rooms: string[];
  tools: string[];
  note?: string;
}

/** The HTTP API of the client's server (`client.http`), with its credentials. */
export class HttpApi {
  constructor(client: Client, baseUrl: string);
  client: Client;
  baseUrl: string;
  headers(): Record<string, string>;
  request(method: string, path: string, options?: { query?: Record<string, unknown>; body?: unknown }): Promise<any>;
  agents(): Promise<AgentInfo[]>;
  channels(options?: { prefix?: string; limit?: number }): Promise<Record<string, unknown>[]>;
}

// ------------------------------------------------------------------ the AI SDK transport

/** `data` of a `data-author` part: who speaks, and how the answer stands. */
export interface AuthorData {
  name: string | null;
  provider: string | null;
  model: string | null;
  msg_serial: number;
  status: Message["status"];
  cancelled_by?: string;
  failure?: string;
}

/** The metadata of a reply: the room and the message it answers. */
export interface ReplyMetadata {
  room: string;
  reply_to: number;
  regenerate?: string;
}

/** The UI message chunks the transport streams (a part of the AI SDK's `UIMessageChunk`). */
export type RoomcastChunk =
  | { type: "start"; messageId: string; messageMetadata: ReplyMetadata }
  | { type: "data-author"; id: string; data: AuthorData }
  | { type: "text-start"; id: string }
  | { type: "text-delta"; id: string; delta: string }
  | { type: "text-end"; id: string }
  | { type: "tool-input-available"; toolCallId: string; toolName: string; input: unknown; dynamic: true }
  | { type: "tool-output-available"; toolCallId: string; output: unknown; dynamic: true }
  | { type: "tool-output-error"; toolCallId: string; errorText: string; dynamic: true }
  | { type: "finish"; finishReason: "stop" }
  | { type: "abort"; reason: string }
  | { type: "error"; errorText: string };

/** The AI SDK's `UIMessage`, as far as the transport reads and writes it. */
export interface ChatMessage {
  id: string;
  role: "system" | "user" | "assistant";
  metadata?: unknown;
  parts: ReadonlyArray<{ type: string; text?: string }>;
}

/** A message of the room as `onMessages` gives it (and `GET /v1/ai-sdk/chat/{id}/messages`). */
export interface RoomUIMessage {
  id: string;
  role: "user" | "assistant";
  metadata?: ReplyMetadata | { client_id: string | null; msg_serial: number; timestamp: number };
  parts: (
    | { type: "text"; text: string; state?: "streaming" | "done" }
    | { type: "data-author"; id: string; data: AuthorData }
    | { type: "dynamic-tool"; toolName: string; toolCallId: string; input: unknown; state: "output-available"; output: unknown }
    | { type: "dynamic-tool"; toolName: string; toolCallId: string; input: unknown; state: "output-error"; errorText: string }
  )[];
}

export interface RoomcastChatTransportOptions extends ClientOptions {
  /** A roomcast Client to use (the transport attaches the rooms itself); default: its own,
   * made from the other options. */
  client?: Client | null;
}

/** The room of a chat id (`room:<id>`); throws a RoomcastError for an id that cannot name one. */
export function roomOf(chatId: string): string;

/**
 * The AI SDK's `ChatTransport` over a roomcast connection (docs/ai-sdk.md): `useChat({
 * transport })` on the room `room:<chat id>`, with every person's messages and every agent's
 * answers live through `onMessages`.
 */
export class RoomcastChatTransport {
  constructor(options?: RoomcastChatTransportOptions);
  readonly client: Client;
  /** A reconnect gives the reply from its beginning. */
  readonly resumeStreamIsReplay: true;
  /** Publish the last user message and stream the answers it triggers. */
  sendMessages(options: {
    trigger: "submit-message" | "regenerate-message";
    chatId: string;
    messageId: string | undefined;
    messages: ChatMessage[];
    abortSignal: AbortSignal | undefined;
    headers?: Record<string, string> | Headers;
    body?: object;
    metadata?: unknown;
  }): Promise<ReadableStream<RoomcastChunk>>;
  /** The answer streaming in the room, from its beginning, then live; null if none. */
  reconnectToStream(options: {
    chatId: string;
    abortSignal?: AbortSignal;
    headers?: Record<string, string> | Headers;
    body?: object;
    metadata?: unknown;
  }): Promise<ReadableStream<RoomcastChunk> | null>;
  /** Cancel the streaming answers this client may cancel (all, or those of `messageId`). */
  stop(chatId: string, options?: { messageId?: string }): Promise<{ cancelled: number[] }>;
  /** The room's messages now and after each change; returns a function that stops it. */
  onMessages(chatId: string, callback: (messages: RoomUIMessage[]) => void, onError?: (error: unknown) => void): () => void;
  /** Stop following the rooms; closes the client if the transport made it. */
  close(): void;
}
