"""The test broker (``tests.fixtures.mosquitto.Broker``) starts where it says it listens: a port another
process took between choosing and binding it is left for another on the first start, and a restart whose port
was taken fails saying so instead of passing for a broker that is not there."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.fixtures.mosquitto as mosquitto
from tests.fixtures.mosquitto import MOSQUITTO, Broker, Subscriber

pytestmark = pytest.mark.skipif(not MOSQUITTO.exists(), reason="mosquitto is not installed")


@pytest.fixture
def taken() -> Iterator[socket.socket]:
    """A port some other process listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s


def test_a_first_start_leaves_a_taken_port_for_a_free_one(
    tmp_path: Path, taken: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    occupied = int(taken.getsockname()[1])
    choices = iter([occupied])
    real = mosquitto.free_port
    monkeypatch.setattr(mosquitto, "free_port", lambda: next(choices, None) or real())
    broker = Broker(tmp_path / "broker")
    assert broker.port == occupied
    broker.start()
    try:
        assert broker.port != occupied
        sub = Subscriber(broker.port, "zsad/fixture")  # connects: it is mosquitto listening there
        sub.close()
    finally:
        broker.stop()


def test_a_restart_on_a_taken_port_fails_saying_so(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    port = broker.port
    broker.stop()
    with socket.socket() as s:
        # The probe connections of the first start may leave the port in TIME_WAIT; a second listener is
        # still refused with this set.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        with pytest.raises(RuntimeError, match="Address already in use"):
            broker.start()
    assert broker.port == port


def test_an_outage_holds_the_port_until_the_restart(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    port = broker.port
    try:
        broker.stop(hold=True)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        with pytest.raises(OSError), socket.socket() as other:  # no other test's server can take it
            other.bind(("127.0.0.1", port))
        broker.start()
        assert broker.port == port
        Subscriber(port, "zsad/fixture").close()  # mosquitto listens there again
    finally:
        broker.stop()
