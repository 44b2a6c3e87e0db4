// Not a peer: the load generator's own ceiling. A minimal WebSocket fan-out server that
// coalesces each socket's frames into one write per event-loop turn, fed by one Redis channel,
// so that `make bench` can show how many deliveries/s the load generator can take at most.
import { createRequire } from "node:module";
import { createHash } from "node:crypto";
import { createServer } from "node:http";
import path from "node:path";

const require = createRequire(path.join(process.env.BENCH_NODE_PREFIX, "node_modules", "_"));
const { Redis } = require("ioredis");

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const sockets = new Set();
const pending = new Map();

function frame(payload) {
  const size = payload.length;
  const head = size < 126 ? Buffer.from([0x81, size]) : Buffer.from([0x81, 126, size >> 8, size & 255]);
  return Buffer.concat([head, payload]);
}

function flush() {
  for (const [socket, frames] of pending) socket.write(frames.length === 1 ? frames[0] : Buffer.concat(frames));
  pending.clear();
}

const sub = new Redis(process.env.REDIS_URL);
sub.subscribe("bench");
sub.on("messageBuffer", (_channel, message) => {
  const wire = frame(message);
  if (pending.size === 0) setImmediate(flush);
  for (const socket of sockets) {
    const frames = pending.get(socket);
    if (frames) frames.push(wire);
    else pending.set(socket, [wire]);
  }
});

const http = createServer((_req, res) => res.end("ok"));
http.on("upgrade", (req, socket) => {
  const accept = createHash("sha1").update(req.headers["sec-websocket-key"] + GUID).digest("base64");
  socket.setNoDelay(true);
  socket.write(
    `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
  );
  socket.write(frame(Buffer.from("ready")));
  sockets.add(socket);
  socket.on("data", () => {}); // the clients send nothing after the handshake
  socket.on("close", () => sockets.delete(socket));
  socket.on("error", () => sockets.delete(socket));
});
http.listen(Number(process.env.PORT), "127.0.0.1");
