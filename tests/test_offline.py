"""The suite must never reach for the network: check that the guard in conftest.py is in force."""

import socket

import pytest


def test_network_connections_are_refused():
    with pytest.raises(RuntimeError, match="offline"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)
