// The message box: send (Enter), a new line (Shift+Enter), replies, typing signals.

import { hintMentions } from "./side.js";
import { $, app, attempt, displayName } from "./state.js";
import { sendTyping } from "./typing.js";

/** A message's text in a line: for reply previews and reply links. */
export function snippet(message) {
  if (message.deleted) return "message deleted";
  const text = typeof message.data === "string" ? message.data : JSON.stringify(message.data);
  return text.length > 60 ? `${text.slice(0, 60)}…` : text;
}

/** Answer `message`: the next message sent carries `extras.reply_to`. */
export function startReply(message) {
  app.replyTo = message.msg_serial;
  $("reply-text").textContent = `Replying to ${displayName(message.client_id)}: ${snippet(message)}`;
  $("reply-preview").hidden = false;
  $("composer-input").focus();
}

export function cancelReply() {
  app.replyTo = null;
  $("reply-preview").hidden = true;
}

async function send(event) {
  event.preventDefault();
  const input = $("composer-input");
  const text = input.value.trim();
  if (!text || !app.channel) return;
  input.value = "";
  autosize();
  const extras = app.replyTo !== null ? { reply_to: app.replyTo } : undefined;
  cancelReply();
  const channel = app.channel;
  const serial = await attempt("send", channel.publish(text, { extras }));
  if (app.channel !== channel) return; // the room was left while the message went out
  if (serial === null) input.value = text;
  else hintMentions(app, text);
}

function autosize() {
  const input = $("composer-input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

/** Wire the message box once; it sends to whatever room is open. */
export function setupComposer() {
  const input = $("composer-input");
  $("composer").addEventListener("submit", send);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    } else if (event.key === "Escape") cancelReply();
  });
  input.addEventListener("input", () => {
    autosize();
    sendTyping(input.value);
  });
  $("reply-cancel").addEventListener("click", cancelReply);
}
