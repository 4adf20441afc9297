"""aether-tornado: the Aether V3 WebSocket protocol served by Tornado."""

__version__ = "0.1.0"
