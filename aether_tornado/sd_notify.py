"""systemd's readiness protocol (sd_notify), so a ``Type=notify`` unit knows when we serve."""

import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` (such as ``READY=1``) to systemd; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True
