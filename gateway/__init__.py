"""Gateway nodes: WebSockets in, Redis pub/sub fan-out to them."""
