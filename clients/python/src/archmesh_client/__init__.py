"""ArchMesh Realtime's Python client: what a backend or a Python program needs to talk to the
gateway and the notifier, and nothing of the servers.

- `archmesh_client.realtime`: `RealtimeClient`, the asyncio WebSocket SDK (needs `websockets`).
- `archmesh_client.publisher`: `connect_publisher`, publishing events on channels via Redis.
- `archmesh_client.control`: `connect_control`, disconnecting, (un)subscribing users and
  revoking tokens on every gateway node via Redis.
- `archmesh_client.notifier`: `NotifierClient`, queueing notifications via Redis.
- `archmesh_client.events`, `.notifications`, `.channels`: the event and request schemas and
  the channel names (and their Redis layout) that clients and servers share.

The servers import these contract pieces from here, so both sides speak one definition. The
package imports no submodule by itself: the WebSocket SDK alone never loads Redis or pydantic.
"""

__version__ = "0.1.0"
