"""The web layer, on Tornado: the WebSocket handshake, the HTTP API and pages, accepting connections."""
