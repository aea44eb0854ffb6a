// What the server refuses, as an exception.

/**
 * An `error` reply from the server, as an exception: `code` (docs/protocol.md §8),
 * `message`, `channel` if it names one, and `status`, the HTTP status of an error the
 * HTTP API answered (null for a WebSocket error).
 */
export class RoomcastError extends Error {
  constructor(code, message, channel, status = null) {
    super(message || `error ${code}`);
    this.name = "RoomcastError";
    this.code = code;
    this.channel = channel ?? null;
    this.status = status;
  }
}
