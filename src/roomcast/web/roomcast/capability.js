// Capabilities (docs/protocol.md §6): which operations a connection may do on which
// channels, as `connected.capability` says, matched as the server matches them.

/** Whether a channel pattern matches `channel`: whole `:` segments; a final `*` matches one
 * or more segments; `*` alone matches every channel. */
export function patternMatches(pattern, channel) {
  if (pattern === "*") return true;
  if (pattern.endsWith(":*")) {
    const prefix = pattern.slice(0, -1); // keeps the trailing ':'
    return channel.startsWith(prefix) && channel.length > prefix.length;
  }
  return pattern === channel;
}

/** A capability: pattern → operations (`*` for all of them). */
export class Capability {
  constructor(rules) {
    this.rules = rules && typeof rules === "object" ? rules : {};
  }
  /** Whether one rule grants `operation` on `channel`; `x-any` grants `x-own`. */
  allows(operation, channel) {
    const any = operation.endsWith("-own") ? `${operation.slice(0, -4)}-any` : null;
    return Object.entries(this.rules).some(
      ([pattern, ops]) => Array.isArray(ops) && patternMatches(pattern, channel) && (ops.includes("*") || ops.includes(operation) || (any !== null && ops.includes(any))),
    );
  }
}
