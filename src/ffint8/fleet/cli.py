"""`ffint8 fleet simulate` and `ffint8 fleet app`: the command line of the federated runs.

Importing this module does not import Flower; running a command without it gives a ConfigError
that names the extra to install.
"""

from __future__ import annotations

import argparse

from ffint8.fleet.config import ENGINES, FleetConfig
from ffint8.fleet.partition import PARTITIONS
from ffint8.train.config import ALGOS, LOOK_AHEAD, FFConfig, TrainConfig


def _widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_options(p: argparse.ArgumentParser) -> None:
    d, f, fl = TrainConfig(), FFConfig(), FleetConfig()
    g = p.add_argument_group("federation")
    g.add_argument("--clients", type=int, default=fl.clients, help="default %(default)s")
    g.add_argument("--rounds", type=int, default=fl.rounds, help="default %(default)s")
    g.add_argument("--local-epochs", type=int, default=fl.local_epochs,
                   help="epochs each client trains per round (default %(default)s)")
    g.add_argument("--partition", default=fl.partition,
                   help=f"one of {', '.join(PARTITIONS)} (label: a few classes per client)")
    g = p.add_argument_group("model, data, training (as in `ffint8 train`)")
    g.add_argument("--model", default=d.model)
    g.add_argument("--hidden", type=_widths, default=d.hidden, help="default 1000,1000")
    g.add_argument("--dataset", default=d.dataset)
    g.add_argument("--data-dir", default=None)
    g.add_argument("--limit-train", type=int, default=None, help="split the first N samples")
    g.add_argument("--limit-test", type=int, default=None)
    g.add_argument("--algo", default=f.algo, help=f"one of {', '.join(ALGOS)}")
    g.add_argument("--look-ahead", default=f.look_ahead, help=f"one of {', '.join(LOOK_AHEAD)}")
    g.add_argument("--lambda-start", type=float, default=f.lambda_start)
    g.add_argument("--lambda-step", type=float, default=f.lambda_step, help="added every epoch")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--optimizer", default=d.optimizer)
    g.add_argument("--lr-schedule", default=d.lr_schedule)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--threads", type=int, default=None, help="torch threads per client")


def add_fleet_parser(sub) -> None:
    """The `fleet` command and its subcommands, on the main parser's subparsers."""
    fleet = sub.add_parser("fleet", help="federated FF-INT8 on Flower (needs ffint8[fleet])")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True)
    s = fsub.add_parser("simulate", help="run a federation of virtual clients on this machine")
    _add_options(s)
    s.add_argument("--engine", default="auto",
                   help=f"one of {', '.join(ENGINES)} (auto: Flower's Ray engine if installed)")
    s.add_argument("--out", default="runs/fleet", help="writes DIR/metrics.json, DIR/model.pt")
    a = fsub.add_parser("app", help="write a Flower app directory for `flwr run` on real devices")
    a.add_argument("directory", help="where pyproject.toml goes")
    _add_options(a)
    a.add_argument("--out", default="runs/fleet",
                   help="where the server (the ServerApp's machine) writes metrics.json")


def config_from_args(a: argparse.Namespace) -> FleetConfig:
    ff = FFConfig(algo=a.algo, look_ahead=a.look_ahead, lambda_start=a.lambda_start,
                  lambda_step=a.lambda_step)
    train = TrainConfig(model=a.model, hidden=a.hidden, dataset=a.dataset, data_dir=a.data_dir,
                        epochs=max(1, a.rounds * a.local_epochs), batch_size=a.batch_size,
                        lr=a.lr, optimizer=a.optimizer, lr_schedule=a.lr_schedule, seed=a.seed,
                        limit_train=a.limit_train, limit_test=a.limit_test, threads=a.threads,
                        ff=ff)
    return FleetConfig(clients=a.clients, rounds=a.rounds, local_epochs=a.local_epochs,
                       partition=a.partition, engine=getattr(a, "engine", "auto"), out=a.out,
                       train=train)


def run_fleet(a: argparse.Namespace) -> int:
    cfg = config_from_args(a)
    if a.fleet_command == "app":
        from ffint8.fleet.simulate import write_app

        path = write_app(cfg, a.directory)
        print(f"wrote {path}; run it with: flwr run {a.directory} <superlink> --stream "
              "(see docs/distributed.md)")
        return 0
    from ffint8.fleet.simulate import simulate

    m = simulate(cfg)
    print(f"test accuracy {100 * m['test_accuracy']:.2f}% after {cfg.rounds} rounds "
          f"({m['engine']} engine, {m['wall_seconds']:.1f}s); wrote {cfg.out}/metrics.json")
    return 0
