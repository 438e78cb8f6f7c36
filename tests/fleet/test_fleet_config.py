"""Federated runs without Flower: the client split, the configuration and its run-config form,
and the error when the fleet extra is missing."""

import importlib.util

import pytest
import torch

from ffint8.cli import main
from ffint8.data import load_dataset
from ffint8.errors import ConfigError
from ffint8.fleet import require_flwr
from ffint8.fleet.config import FleetConfig
from ffint8.fleet.partition import class_counts, partition_indices
from ffint8.train.config import FFConfig, TrainConfig


@pytest.fixture(scope="module")
def labels():
    return load_dataset("synthetic", limit_train=2000).train.labels  # balanced, 10 classes


@pytest.mark.parametrize("mode", ["iid", "label"])
@pytest.mark.parametrize("n_parts", [1, 3, 4])
def test_partition_is_disjoint_and_complete(labels, mode, n_parts):
    parts = partition_indices(labels, n_parts, mode, seed=0)
    assert len(parts) == n_parts
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(len(labels)))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= (1 if mode == "iid" else 2)
    again = partition_indices(labels, n_parts, mode, seed=0)  # every node computes the same split
    assert all(torch.equal(a, b) for a, b in zip(parts, again))


def test_label_split_gives_each_client_few_classes(labels):
    iid = class_counts(labels, partition_indices(labels, 4, "iid", 0), 10)
    by_label = class_counts(labels, partition_indices(labels, 4, "label", 0), 10)
    assert all(sum(c > 0 for c in client) == 10 for client in iid)
    # 8 runs of 250 label-sorted samples (200 per class) span 2 classes each: 2 runs per client
    assert all(sum(c > 0 for c in client) <= 4 for client in by_label)


def test_partition_errors(labels):
    with pytest.raises(ConfigError, match="--partition"):
        partition_indices(labels, 2, "dirichlet", 0)
    with pytest.raises(ConfigError, match="--clients 6"):
        partition_indices(labels[:11], 6, "label", 0)


def test_run_config_round_trip():
    cfg = FleetConfig(clients=3, rounds=7, local_epochs=2, partition="label", out="x/y",
                      train=TrainConfig(hidden=(40, 30), limit_train=500, lr=0.01, seed=4,
                                        ff=FFConfig(algo="ff-fp32", look_ahead="none")))
    rc = cfg.to_run_config()
    assert rc["hidden"] == "40,30" and rc["limit-test"] == 0 and rc["data-dir"] == ""
    assert all(isinstance(v, (bool, int, float, str)) for v in rc.values())  # Flower's scalars
    assert FleetConfig.from_run_config(rc) == cfg
    with pytest.raises(ConfigError, match="unknown run-config keys rounds"):
        FleetConfig.from_run_config({"rounds": 3})


def test_client_seeds_differ_by_client_and_round():
    cfg = FleetConfig()
    seeds = {cfg.client_config(c, r).seed for c in range(4) for r in range(1, 6)}
    assert len(seeds) == 20
    assert cfg.client_config(0, 1).epochs == cfg.rounds * cfg.local_epochs


@pytest.mark.parametrize("kw, match", [({"clients": 0}, "--clients"), ({"rounds": 0}, "--rounds"),
                                       ({"partition": "x"}, "--partition"),
                                       ({"engine": "grpc"}, "--engine")])
def test_fleet_config_validation(kw, match):
    with pytest.raises(ConfigError, match=match):
        FleetConfig(**kw)


def test_missing_flower_names_the_extra(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "flwr" else real(name, *a))
    with pytest.raises(ConfigError, match=r"ffint8\[fleet\]"):
        require_flwr()
    assert main(["fleet", "simulate", "--dataset", "synthetic", "--out", str(tmp_path)]) == 2
    assert "pip install 'ffint8[fleet]'" in capsys.readouterr().err
