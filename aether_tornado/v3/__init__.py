"""The V3 protocol: the message, its schema and IDs, the server's own messages and errors, channels and positions."""
