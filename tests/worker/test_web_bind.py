"""The worker's web server listens on loopback unless STREAMS_WEB_HOST says otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import Start

pytestmark = pytest.mark.integration


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                if len(address) == 8:  # IPv4, little-endian bytes
                    found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.add("::" if set(address) == {"0"} else address)
    return found


def test_the_web_server_binds_loopback_by_default(workers: Start) -> None:
    worker = workers()
    assert listening_addresses(worker.port) == {"127.0.0.1"}


def test_streams_web_host_opens_it_to_the_network(workers: Start) -> None:
    worker = workers(STREAMS_WEB_HOST="0.0.0.0")
    assert listening_addresses(worker.port) == {"0.0.0.0"}
    assert worker.http("/health")[0] == 200
