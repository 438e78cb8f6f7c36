"""Federated FF-INT8 on Flower (skipped without the fleet extra): a loopback federation learns,
its files are usable, the app for `flwr run` validates, the Ray engine agrees with loopback."""

import json
import os

import pytest

pytest.importorskip("flwr")  # Flower 1.42 needs Python 3.11, which has tomllib

import tomllib  # noqa: E402
from flwr.common.config import validate_config  # noqa: E402

from ffint8.cli import main  # noqa: E402
from ffint8.fleet.config import FleetConfig  # noqa: E402
from ffint8.fleet.simulate import simulate  # noqa: E402
from ffint8.train.config import TrainConfig  # noqa: E402
from ffint8.train.run import evaluate_checkpoint  # noqa: E402


def small(tmp_path, engine="loopback", partition="iid", rounds=3) -> FleetConfig:
    return FleetConfig(clients=2, rounds=rounds, partition=partition, engine=engine,
                       out=str(tmp_path / engine),
                       train=TrainConfig(dataset="synthetic", hidden=(32, 32), limit_train=400,
                                         limit_test=200, threads=1))


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    cfg = small(tmp_path_factory.mktemp("fleet"))
    return cfg, simulate(cfg, log=lambda s: None)


def test_accuracy_improves_over_rounds(federation):
    cfg, m = federation
    acc = [r["test_accuracy"] for r in m["per_round"]]
    assert [r["round"] for r in m["per_round"]] == [0, 1, 2, 3]  # round 0: the initial model
    assert acc[-1] > acc[0] + 0.3 and acc[-1] > 0.6, acc
    assert m["engine"] == "loopback" and all(r["train_loss"] > 0 for r in m["per_round"][1:])


def test_metrics_and_model_are_written(federation):
    cfg, m = federation
    with open(os.path.join(cfg.out, "metrics.json")) as f:
        on_disk = json.load(f)
    assert on_disk["test_accuracy"] == m["test_accuracy"]
    assert sum(map(sum, on_disk["client_class_counts"])) == 400
    from ffint8.quant import fastsr  # the clients' dense weights step from int8 factors

    assert ("int8 gradient factors" in on_disk["kernel"]) == fastsr.available()
    ev = evaluate_checkpoint(os.path.join(cfg.out, "model.pt"), limit_test=200)
    assert ev["test_accuracy"] == pytest.approx(m["test_accuracy"])  # the global model, saved


def test_flower_state_stays_in_the_run_directory(federation):
    cfg, _ = federation
    assert os.environ["FLWR_HOME"] == os.path.abspath(os.path.join(cfg.out, "flwr-home"))
    assert os.environ["FLWR_TELEMETRY_ENABLED"] == "0"


def test_label_split_federation_runs(tmp_path):
    m = simulate(small(tmp_path, partition="label", rounds=2), log=lambda s: None)
    assert m["partition"] == "label" and len(m["per_round"]) == 3
    assert all(sum(c > 0 for c in client) < 10 for client in m["client_class_counts"])


def test_app_directory_validates_and_round_trips(tmp_path, capsys):
    assert main(["fleet", "app", str(tmp_path / "app"), "--clients", "3", "--rounds", "4",
                 "--partition", "label", "--hidden", "50,40", "--out", "results"]) == 0
    config = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(config, check_module=True, project_dir=tmp_path / "app")
    assert ok, errors
    back = FleetConfig.from_run_config(config["tool"]["flwr"]["app"]["config"])
    assert (back.clients, back.rounds, back.partition, back.train.hidden, back.out) == \
        (3, 4, "label", (50, 40), "results")
    assert "flwr run" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FFINT8_TEST_RAY") != "1",
                    reason="Flower's Ray engine takes a minute to start: FFINT8_TEST_RAY=1 runs it")
def test_ray_engine_agrees_with_loopback(federation, tmp_path):
    pytest.importorskip("ray")
    cfg, loop = federation
    ray = simulate(small(tmp_path, engine="ray"), log=lambda s: None)
    assert [r["test_accuracy"] for r in ray["per_round"]] == \
        [r["test_accuracy"] for r in loop["per_round"]]
