"""The WebSocket layer: RFC 6455 frames, one socket after its handshake, and the budgets that bound a peer. No V3."""
