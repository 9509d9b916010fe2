"""The suite must never reach for the network: check that the guard in conftest.py is in force."""

import os
import socket

import pytest


def test_network_connections_are_refused():
    with pytest.raises(RuntimeError, match="offline"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)


def test_hub_libraries_are_told_to_stay_offline():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
