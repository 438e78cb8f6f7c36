"""Federated FF-INT8 on Flower: clients train on their own shards, a server averages (FedAvg).

Flower is an optional extra (pip install 'ffint8[fleet]'); ffint8.fleet.app, .loopback and
.simulate import it, the configuration and partitioning modules do not.
"""

from __future__ import annotations

import importlib.util
import sys

from ffint8.errors import ConfigError


def require_flwr() -> None:
    """A ConfigError naming the extra to install when Flower is missing."""
    if importlib.util.find_spec("flwr") is None:
        why = "" if sys.version_info >= (3, 11) else " (Flower 1.42 needs Python 3.11 or newer)"
        raise ConfigError("ffint8 fleet needs Flower: pip install 'ffint8[fleet]'" + why)
