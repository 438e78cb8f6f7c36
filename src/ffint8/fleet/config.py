"""A federated run's configuration, and the flat run config Flower passes to its apps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from ffint8.errors import ConfigError
from ffint8.fleet.partition import PARTITIONS
from ffint8.quant.fastsr import mix64
from ffint8.train.config import FFConfig, TrainConfig

ENGINES = ("auto", "ray", "loopback")

# run-config key -> (section, field): section "fleet" is FleetConfig, "train" TrainConfig, "ff"
# FFConfig. Flower run configs hold flat scalars: the hidden widths travel as "1000,1000", and 0
# or "" stand for None (all samples, default directory, all threads).
RUN_KEYS = {
    "num-server-rounds": ("fleet", "rounds"), "min-nodes": ("fleet", "clients"),
    "local-epochs": ("fleet", "local_epochs"), "partition": ("fleet", "partition"),
    "out": ("fleet", "out"),
    "model": ("train", "model"), "hidden": ("train", "hidden"), "dataset": ("train", "dataset"),
    "data-dir": ("train", "data_dir"), "limit-train": ("train", "limit_train"),
    "limit-test": ("train", "limit_test"), "batch-size": ("train", "batch_size"),
    "lr": ("train", "lr"), "optimizer": ("train", "optimizer"),
    "lr-schedule": ("train", "lr_schedule"), "seed": ("train", "seed"),
    "threads": ("train", "threads"),
    "algo": ("ff", "algo"), "look-ahead": ("ff", "look_ahead"),
    "lambda-start": ("ff", "lambda_start"), "lambda-step": ("ff", "lambda_step"),
}
_OPTIONAL = {"data_dir", "limit_train", "limit_test", "threads"}


@dataclass(frozen=True)
class FleetConfig:
    """clients train FF-INT8 (train) on their shards for local_epochs per round; the server
    averages their weights (FedAvg) rounds times and evaluates on the test set after each."""

    clients: int = 4
    rounds: int = 5
    local_epochs: int = 1
    partition: str = "iid"
    engine: str = "auto"  # simulation only: Flower's Ray engine, or the in-process loopback
    out: str = "runs/fleet"
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        for flag, v in (("--clients", self.clients), ("--rounds", self.rounds),
                        ("--local-epochs", self.local_epochs)):
            if v < 1:
                raise ConfigError(f"{flag} must be at least 1, got {v}")
        if self.partition not in PARTITIONS:
            raise ConfigError(f"invalid --partition {self.partition!r}; choose one of: "
                              f"{', '.join(PARTITIONS)}")
        if self.engine not in ENGINES:
            raise ConfigError(f"invalid --engine {self.engine!r}; choose one of: {', '.join(ENGINES)}")
        if self.train.ff.schedule != "simultaneous":
            raise ConfigError("fleet clients train all units at once (--schedule simultaneous)")

    def client_config(self, partition_id: int, server_round: int) -> TrainConfig:
        """What a client trains one round with: the lr and lambda schedules span the whole run
        (epochs = rounds x local epochs), and a seed of its own for the shuffling, the negative
        labels and the stochastic rounding of this client in this round."""
        seed = mix64(self.train.seed ^ mix64(1_000_003 * partition_id + server_round)) >> 1
        return replace(self.train, epochs=self.rounds * self.local_epochs, seed=seed)

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        sections = {"fleet": self, "train": self.train, "ff": self.train.ff}
        rc = {}
        for key, (section, name) in RUN_KEYS.items():
            v = getattr(sections[section], name)
            if name == "hidden":
                v = ",".join(str(h) for h in v)
            elif name in _OPTIONAL and v is None:
                v = "" if name == "data_dir" else 0
            rc[key] = v
        return rc

    @classmethod
    def from_run_config(cls, rc: Mapping, engine: str = "auto") -> FleetConfig:
        """The inverse of to_run_config; keys it lacks keep their defaults."""
        unknown = sorted(set(rc) - set(RUN_KEYS))
        if unknown:
            raise ConfigError(f"unknown run-config keys {', '.join(unknown)}; known: "
                              f"{', '.join(RUN_KEYS)}")
        kw: dict[str, dict] = {"fleet": {}, "train": {}, "ff": {}}
        for key, v in rc.items():
            section, name = RUN_KEYS[key]
            if name == "hidden":
                try:
                    v = tuple(int(h) for h in str(v).split(","))
                except ValueError:
                    raise ConfigError(f"run-config hidden: expected widths like '1000,1000', "
                                      f"got {v!r}") from None
            elif name in _OPTIONAL and v in (0, ""):
                v = None
            kw[section][name] = v
        train = replace(TrainConfig(), **kw["train"], ff=replace(FFConfig(), **kw["ff"]))
        return cls(**kw["fleet"], engine=engine, train=train)
