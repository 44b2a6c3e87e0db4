// Node Socket.IO with @socket.io/redis-adapter: the reference peer. A client joins rooms with
// a `join` event (an array of room names) and gets `joined` back once they are joined.
import { createRequire } from "node:module";
import { createServer } from "node:http";
import path from "node:path";

const require = createRequire(path.join(process.env.BENCH_NODE_PREFIX, "node_modules", "_"));
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { Redis } = require("ioredis");

const pub = new Redis(process.env.REDIS_URL);
const sub = pub.duplicate();
const http = createServer((_req, res) => res.end("ok"));
const io = new Server(http, {
  adapter: createAdapter(pub, sub),
  transports: ["websocket"],
  serveClient: false,
});
io.on("connection", (socket) => {
  socket.on("join", (rooms) => {
    socket.join(rooms);
    socket.emit("joined", rooms);
  });
  // An application-level ping for the capacity scenario: acknowledged at once.
  socket.on("echo", (ack) => {
    if (typeof ack === "function") ack();
  });
});
http.listen(Number(process.env.PORT), "127.0.0.1");
