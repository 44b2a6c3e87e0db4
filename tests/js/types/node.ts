// In Node >= 20 (Node's types, no DOM): the `ws` package's WebSocket fits the option.
import { ArchMeshRealtime } from "@archmesh/realtime";
import WebSocket from "ws";

export const client = new ArchMeshRealtime("ws://127.0.0.1:8000/ws", { token: "jwt", WebSocket });
client.on("publication", ({ channel, data }) => void [channel, data]);
client.addEventListener("state", (event) => void event.detail.state);
// @ts-expect-error a ws server is not a client socket
new ArchMeshRealtime("ws://127.0.0.1:8000/ws", { token: "jwt", WebSocket: WebSocket.Server });
