"""The core: local connections (hub), one client's session, routing and the node's housekeeping, recovery."""
