// What the scenarios share: each chunk checked against the schema `ai` exports, chunks read
// into one UIMessage with the SDK's own reader, a user message.
import { asSchema, readUIMessageStream, uiMessageChunkSchema } from "ai";

const chunkSchema = asSchema(uiMessageChunkSchema);
/** The chunks that failed the schema, with why. */
export const invalid = [];

export async function check(chunk) {
  const result = await chunkSchema.validate(chunk);
  if (!result.success) invalid.push({ chunk, error: String(result.error) });
}

/** The chunks as the SDK's reader makes them into one UIMessage. */
export async function toMessage(chunks) {
  const stream = new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
      controller.close();
    },
  });
  let last;
  for await (const message of readUIMessageStream({ stream })) last = message;
  return JSON.parse(JSON.stringify(last ?? null));
}

export function userMessage(text) {
  return { id: `u-${Math.random().toString(16).slice(2)}`, role: "user", parts: [{ type: "text", text }] };
}
