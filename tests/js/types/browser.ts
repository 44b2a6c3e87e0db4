// In a browser (DOM globals, no Node types): the global WebSocket fits the option, and the
// events are the DOM's CustomEvents.
import { ArchMeshRealtime, type ArchMeshRealtimeEvent, type Publication } from "@archmesh/realtime";

export const client = new ArchMeshRealtime(`wss://${location.host}/ws`, {
  token: () => fetch("/api/realtime-token").then((response) => response.text()),
});
new ArchMeshRealtime("ws://127.0.0.1:8000/ws", { token: "jwt", WebSocket });
// @ts-expect-error not a WebSocket constructor
new ArchMeshRealtime("ws://127.0.0.1:8000/ws", { token: "jwt", WebSocket: XMLHttpRequest });

client.addEventListener("publication", (event) => {
  const custom: CustomEvent<Publication> = event;
  document.title = String(custom.detail.data["type"]);
});
export const handler = (event: CustomEvent<Publication>): void => void event.detail.channel;
client.addEventListener("publication", handler);
export const pub: ArchMeshRealtimeEvent<"publication"> = new CustomEvent<Publication>("publication", {
  detail: { channel: "session:s1", offset: 1, epoch: "e", data: { type: "workflow_update" } },
});
