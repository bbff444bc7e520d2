"""Whether something accepts TCP connections on a port, on the built-in _socket module: the start plan asks
before anything else of clawsvc (or the socket module) is loaded."""

from __future__ import annotations

import _socket


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port (an IPv4 address)."""
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0
    except OSError:
        return False
    finally:
        sock.close()
