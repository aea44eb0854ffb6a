// The socket.io anchor of `python -m bench rooms`: what a team would pick instead of roomcast.
//   node rooms.mjs PORT
// A client joins rooms ("join" ROOM, answered by "joined" ROOM) and publishes to one
// ("pub" ROOM DATA); every socket in the room, the sender included, gets ("ev" SEQ DATA), where
// SEQ counts the room's events from 1 so that a client can tell a gap. Nothing is stored: a
// client that drops misses what was sent meanwhile. Listens on 127.0.0.1, compression off.
import http from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2]);
if (!port) {
  console.error("usage: node rooms.mjs PORT");
  process.exit(2);
}
const server = http.createServer();
const io = new Server(server, { perMessageDeflate: false, httpCompression: false });
const seq = new Map();

io.on("connection", (socket) => {
  socket.on("join", (room) => {
    socket.join(room);
    socket.emit("joined", room);
  });
  socket.on("pub", (room, data) => {
    const next = (seq.get(room) ?? 0) + 1;
    seq.set(room, next);
    io.to(room).emit("ev", next, data);
  });
});
server.listen({ port, host: "127.0.0.1", backlog: 4096 }, () => console.log(`listening ${port}`));
