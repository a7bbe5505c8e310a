"""The tests' port hold: a held port refuses connections and cannot be bound by anyone else until released."""

from __future__ import annotations

import errno
import socket

import pytest

from tests.fixtures.ports import PortHold


def _bind(port: int) -> socket.socket:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        raise
    return s


def test_a_held_port_refuses_connections_and_binds_until_released() -> None:
    hold = PortHold()
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", hold.port), timeout=5).close()
        with pytest.raises(OSError) as taken:
            _bind(hold.port).close()
        assert taken.value.errno == errno.EADDRINUSE
    finally:
        assert hold.release() == hold.port
    assert not hold.held
    server = _bind(hold.port)  # free again for its server
    server.listen()
    try:
        socket.create_connection(("127.0.0.1", hold.port), timeout=5).close()
    finally:
        server.close()
    hold.release()  # twice is harmless


def test_a_hold_takes_the_port_of_a_server_that_just_died_with_connections_open() -> None:
    """The outage case: a server closes first, so its side of a connection lingers in TIME_WAIT; the hold
    still takes the port (SO_REUSEADDR), where a plain bind would fail."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn, _ = server.accept()
    conn.close()  # the server's end closes first: TIME_WAIT on its port
    server.close()
    client.close()
    with pytest.raises(OSError) as lingering:
        _bind(port).close()
    assert lingering.value.errno == errno.EADDRINUSE
    with PortHold(port) as hold:
        assert hold.port == port
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
