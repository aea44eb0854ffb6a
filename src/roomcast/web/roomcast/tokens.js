// Tokens: when one expires, when to renew it, and getting one from a site's auth_url.

import { RoomcastError } from "./errors.js";

const RENEW_BEFORE_S = 30;

/** A token's claims, read without verifying them (only the server can); {} if it is not a JWT. */
function tokenClaims(token) {
  const parts = String(token || "").split(".");
  if (parts.length !== 3) return {};
  try {
    const claims = JSON.parse(atob(parts[1].replace(/-/g, "+").replace(/_/g, "/")));
    return claims && typeof claims === "object" ? claims : {};
  } catch {
    return {};
  }
}

/** A token's `exp` in seconds, read without verifying it; null if it has none. */
export function tokenExpiry(token) {
  const exp = tokenClaims(token).exp;
  return typeof exp === "number" ? exp : null;
}

/** A token's `capability` claim (what the server applies once it takes the token); null if
 * it has none. */
export function tokenCapability(token) {
  const capability = tokenClaims(token).capability;
  return capability && typeof capability === "object" ? capability : null;
}

/** Seconds until a token with `remaining` seconds of life should be renewed. */
export function renewDelay(remaining) {
  if (remaining <= 0) return 0;
  return Math.min((remaining * 2) / 3, Math.max(remaining - RENEW_BEFORE_S, remaining / 2));
}

/**
 * An `authCallback` that asks a site's `authUrl` for a token: `POST {client_id}` as JSON,
 * with the page's cookies, answered by `{token}` (docs/web.md, "Signing in with auth_url").
 */
export function authUrlCallback(authUrl, clientId) {
  return async () => {
    const response = await fetch(authUrl, {
      method: "POST",
      credentials: "include",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ client_id: clientId }),
    });
    if (!response.ok) throw new RoomcastError(40100, `the auth_url answered ${response.status}`);
    const body = await response.json();
    if (typeof body.token !== "string") throw new RoomcastError(40100, "the auth_url sent no token");
    return body.token;
  };
}
