// The HTTP API (docs/http.md), with the credentials of the client it belongs to.

import { RoomcastError } from "./errors.js";

/** The HTTP origin (and path prefix) of a WebSocket URL: `wss://host/v1/ws` is `https://host`. */
export function httpBaseOf(websocketUrl) {
  const url = new URL(websocketUrl, globalThis.location?.href);
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.pathname = url.pathname.replace(/\/v1\/ws\/?$/, "");
  url.search = url.hash = "";
  return url.href.replace(/\/$/, "");
}

/**
 * The HTTP API of the client's server (`client.http`). Each call sends the client's token
 * (`Authorization: Bearer`) or, without one, its client id (`X-Roomcast-Client-Id`), and
 * resolves with the JSON answer or rejects with a RoomcastError (its `status` set).
 */
export class HttpApi {
  constructor(client, baseUrl) {
    this.client = client;
    this.baseUrl = baseUrl;
  }

  /** The credentials' headers: the token if there is one, else the client id. */
  headers() {
    const headers = {};
    if (this.client.token) headers.Authorization = `Bearer ${this.client.token}`;
    else if (this.client.clientId) headers["X-Roomcast-Client-Id"] = this.client.clientId;
    return headers;
  }

  /** Any call: `request("GET", "/v1/channels", {query: {prefix: "room:"}})`; `body` is sent as JSON. */
  async request(method, path, { query = {}, body } = {}) {
    const url = new URL(this.baseUrl + path);
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    }
    const init = { method, headers: this.headers() };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(url, init);
    const answer = await response.json().catch(() => null);
    if (!response.ok) {
      const error = answer?.error || {};
      throw new RoomcastError(error.code ?? response.status * 100, error.message || `HTTP ${response.status}`, null, response.status);
    }
    return answer;
  }

  /** `GET /v1/agents`: the agents the server runs (`{name, provider, model, rooms, ...}`). */
  async agents() {
    return (await this.request("GET", "/v1/agents")).items || [];
  }

  /** `GET /v1/channels`: the channels you may read (`{channel, serial, occupancy, ...}`), by name. */
  async channels({ prefix, limit } = {}) {
    return (await this.request("GET", "/v1/channels", { query: { prefix, limit } })).items || [];
  }
}
