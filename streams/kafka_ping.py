"""Exit 0 when a Kafka broker answers an ApiVersions request at HOST:PORT.

Standard library only, so `make kafka-up` can run this file with any python3 to tell
"a broker answers" from "a port is open" before a virtualenv exists.
Usage: python3 streams/kafka_ping.py [host:port[,host:port...]].
"""

from __future__ import annotations

import socket
import struct
import sys


def answers(address: str, timeout: float = 2.0) -> bool:
    """Send ApiVersions v0 and check the reply carries our correlation id."""
    host, _, port = address.rpartition(":")
    client_id = b"streams-ping"
    correlation_id = 7
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host or "localhost", int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = sock.recv(8)
    except (OSError, ValueError):
        return False
    if len(header) < 8:
        return False
    _size, received_id = struct.unpack(">ii", header)
    return bool(received_id == correlation_id)


def main() -> int:
    """Exit status 0 when any of the given brokers answers."""
    servers = sys.argv[1] if len(sys.argv) > 1 else "localhost:9092"
    return 0 if any(answers(s.strip()) for s in servers.split(",") if s.strip()) else 1


if __name__ == "__main__":
    sys.exit(main())
