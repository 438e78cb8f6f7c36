"""The Flower app: a ClientApp that trains FF-INT8 on its shard, a ServerApp that runs FedAvg.

Weights travel as Flower ArrayRecords of the model's state_dict. Each round a client loads the
global weights, trains local_epochs epochs with a fresh optimiser (FedAvg's usual choice) and
replies with its weights and {"num-examples", "train-loss"}; the server averages the weights by
num-examples and evaluates the average on the test set (before round 1, and after each round).

`client_app` and `server_app` below read their settings from Flower's run config, as `flwr run`
deploys them (see docs/distributed.md); `ffint8 fleet simulate` builds apps around a FleetConfig.
"""

from __future__ import annotations

import platform
import time
from functools import lru_cache
from pathlib import Path

import flwr
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from ffint8 import __version__
from ffint8.data import Dataset, load_dataset, to_float_images
from ffint8.devices import flush_denormals
from ffint8.fleet.config import FleetConfig
from ffint8.fleet.partition import class_counts, partition_indices
from ffint8.train.loop import FFTrainer
from ffint8.train.run import build_model, kernel_description, save_checkpoint, write_json_atomic


@lru_cache(maxsize=2)
def _dataset(name: str, data_dir: str | None, limit_train: int | None, limit_test: int | None,
             seed: int) -> Dataset:
    return load_dataset(name, data_dir, limit_train, limit_test, seed=seed)


def load_data(cfg: FleetConfig) -> Dataset:
    t = cfg.train
    return _dataset(t.dataset, t.data_dir, t.limit_train, t.limit_test, t.seed)


def client_shard(cfg: FleetConfig, partition_id: int, n_parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This client's training images (n, D) float and labels (n,): its part of the split."""
    data = load_data(cfg)
    idx = partition_indices(data.train.labels, n_parts, cfg.partition, cfg.train.seed)[partition_id]
    return to_float_images(data.train.images[idx]), data.train.labels[idx]


def train_round(cfg: FleetConfig, state: dict, partition_id: int, n_parts: int,
                server_round: int) -> tuple[dict, dict]:
    """One client's round: global weights in, (its weights, {num-examples, train-loss}) out."""
    x, y = client_shard(cfg, partition_id, n_parts)
    train = cfg.client_config(partition_id, server_round)
    flush_denormals(train.flush_denormals)
    if train.threads:
        torch.set_num_threads(train.threads)
    model = build_model(train, x.shape[1], load_data(cfg).num_classes)
    model.load_state_dict(state)
    trainer = FFTrainer(model, train, load_data(cfg).num_classes)
    trainer.epoch = (server_round - 1) * cfg.local_epochs  # lambda and lr run across rounds
    losses = []
    for _ in range(cfg.local_epochs):
        losses.append(trainer.train_epoch(x, y)[0])
        trainer.epoch += 1
    return model.state_dict(), {"num-examples": int(x.shape[0]), "train-loss": losses[-1]}


def make_client_app(cfg: FleetConfig | None = None) -> ClientApp:
    """A ClientApp training with `cfg`, or, when None, with the run's Flower run config."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        fc = cfg if cfg is not None else FleetConfig.from_run_config(context.run_config)
        state, metrics = train_round(
            fc, msg.content["arrays"].to_torch_state_dict(),
            int(context.node_config["partition-id"]), int(context.node_config["num-partitions"]),
            int(msg.content["config"]["server-round"]))
        content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics)})
        return Message(content, reply_to=msg)

    return app


def run_federation(grid: Grid, cfg: FleetConfig, log=print) -> dict:
    """The server's side of a run: FedAvg for cfg.rounds rounds over the nodes of `grid`, the
    global model evaluated each round; writes cfg.out/metrics.json and model.pt."""
    data = load_data(cfg)
    x_test = to_float_images(data.test.images)
    in_features = x_test.shape[1]
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.train, in_features, data.num_classes)
    evaluator = FFTrainer(model, cfg.train, data.num_classes)
    rounds: list[dict] = []
    clock = [time.perf_counter()]

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        seconds = time.perf_counter() - clock[0]  # the round: clients' training, averaging
        model.load_state_dict(arrays.to_torch_state_dict())
        acc = evaluator.evaluate(x_test, data.test.labels)
        rounds.append({"round": server_round, "test_accuracy": acc,
                       "seconds": seconds if server_round else 0.0})
        log(f"round {server_round:3d}  test accuracy {100 * acc:.2f}%  {seconds:.1f}s")
        clock[0] = time.perf_counter()
        return MetricRecord({"accuracy": acc})

    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=cfg.clients,
                      min_available_nodes=cfg.clients)
    started = time.time()
    result = strategy.start(grid, ArrayRecord(model.state_dict()), num_rounds=cfg.rounds,
                            evaluate_fn=evaluate)
    for r in rounds[1:]:
        r["train_loss"] = float(result.train_metrics_clientapp[r["round"]]["train-loss"])
    model.load_state_dict(result.arrays.to_torch_state_dict())
    parts = partition_indices(data.train.labels, cfg.clients, cfg.partition, cfg.train.seed)
    metrics = {
        "clients": cfg.clients, "rounds": cfg.rounds, "local_epochs": cfg.local_epochs,
        "partition": cfg.partition, "dataset": data.name, "algo": cfg.train.ff.algo,
        "per_round": rounds, "test_accuracy": rounds[-1]["test_accuracy"],
        # the clients' trainers are built as the evaluator is: its choice is theirs
        "wall_seconds": time.time() - started, "kernel": kernel_description(
            cfg.train, factored=evaluator.factored),
        "client_class_counts": class_counts(data.train.labels, parts, data.num_classes),
        "config": cfg.train.to_dict(),
        "environment": {"ffint8": __version__, "flwr": flwr.__version__, "torch": torch.__version__,
                        "python": platform.python_version(), "machine": platform.machine()},
    }
    out = Path(cfg.out)
    # the server scores with the test set only, so --predict-units auto stays at all here
    save_checkpoint(out / "model.pt", evaluator.prediction_config(), data.num_classes,
                    in_features, model=model)
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def make_server_app(cfg: FleetConfig | None = None, results: dict | None = None,
                    log=print) -> ServerApp:
    """A ServerApp running `cfg` (None: the run config); the metrics also land in results."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        fc = cfg if cfg is not None else FleetConfig.from_run_config(context.run_config)
        metrics = run_federation(grid, fc, log)
        if results is not None:
            results.update(metrics)

    return app


# What `flwr run` deploys: [tool.flwr.app.components] in the app's pyproject.toml names these.
client_app = make_client_app()
server_app = make_server_app()
