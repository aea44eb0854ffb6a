// roomcast.d.ts against the AI SDK's types: `tsc --noEmit` passes only if
// RoomcastChatTransport is a ChatTransport<UIMessage> and the room's messages are UIMessages
// (tests/ecosystem/test_ai_sdk_transport.py runs it).
import type { ChatTransport, UIMessage, UIMessageChunk } from "ai";

import { Client, RoomcastChatTransport, type RoomUIMessage, roomOf } from "../../../src/roomcast/web/roomcast.js";

const transport: ChatTransport<UIMessage> = new RoomcastChatTransport({ url: "ws://127.0.0.1:8000/v1/ws", clientId: "alice" });
const shared: ChatTransport<UIMessage> = new RoomcastChatTransport({ client: new Client({ token: "t" }) });

export async function use(chat: RoomcastChatTransport, setMessages: (messages: UIMessage[]) => void): Promise<void> {
  const off: () => void = chat.onMessages("lunch", setMessages);
  const stream: ReadableStream<UIMessageChunk> | null = await chat.reconnectToStream({ chatId: "lunch" });
  const { cancelled }: { cancelled: number[] } = await chat.stop("lunch", { messageId: "reply-1" });
  const room: string = roomOf("lunch");
  const messages: UIMessage[] = [] as RoomUIMessage[];
  off();
  void [stream, cancelled, room, messages, transport, shared];
}
