"""`ffint8 fleet simulate`: a whole federation on one machine; and `ffint8 fleet app`, the app
directory that `flwr run` deploys to real devices."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ffint8.errors import FFInt8Error
from ffint8.fleet import require_flwr
from ffint8.fleet.config import FleetConfig

RAY_CLIENT_RESOURCES = {"num_cpus": 1, "num_gpus": 0.0}  # one core per virtual client


def resolve_engine(engine: str) -> str:
    """auto: Flower's Ray-based simulation engine when Ray is installed, else the loopback."""
    if engine == "auto":
        return "ray" if importlib.util.find_spec("ray") is not None else "loopback"
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise FFInt8Error("--engine ray needs Ray: pip install 'flwr[simulation]==1.42.*' "
                          "(or use --engine loopback)")
    return engine


def flower_environment(out: Path) -> None:
    """No telemetry, and Flower's home (state, config) under the run directory. Set before
    Flower is imported: it reads them then."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["FLWR_HOME"] = str((out / "flwr-home").resolve())


def simulate(cfg: FleetConfig, log=print) -> dict:
    """Run cfg.clients virtual clients and the server on this machine; returns the metrics
    (also written to cfg.out/metrics.json, with the global model in cfg.out/model.pt)."""
    require_flwr()
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FFInt8Error(f"--out {out}: cannot create the directory ({exc.strerror})") from None
    flower_environment(out)
    engine = resolve_engine(cfg.engine)
    from ffint8.fleet.app import make_client_app, make_server_app

    results: dict = {}
    server, client = make_server_app(cfg, results, log), make_client_app(cfg)
    log(f"federated {cfg.train.ff.algo} on {cfg.train.dataset}: {cfg.clients} clients "
        f"({cfg.partition}), {cfg.rounds} rounds of {cfg.local_epochs} local epoch(s), "
        f"engine {engine}")
    if engine == "ray":
        from flwr.simulation import run_simulation

        run_simulation(server, client, num_supernodes=cfg.clients,
                       backend_config={"client_resources": RAY_CLIENT_RESOURCES})
    else:
        from flwr.app import Context, RecordDict

        from ffint8.fleet.loopback import LoopbackGrid

        grid = LoopbackGrid(client, cfg.clients)
        server(grid, Context(run_id=grid.run.run_id, node_id=0, node_config={},
                             state=RecordDict(), run_config={}))
    if not results:
        raise FFInt8Error(f"the {engine} simulation ended without results; see its log above")
    results["engine"] = engine
    return results


APP_TEMPLATE = """\
# A Flower app that trains FF-INT8 (ffint8.fleet.app) on a SuperLink's SuperNodes.
# Every machine needs ffint8 installed with its fleet extra: pip install 'ffint8[fleet]'.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "ffint8-fleet"
version = "1.0.0"
description = "Federated Forward-Forward training in INT8 arithmetic"
license = "MIT"
dependencies = ["ffint8[fleet]"]

[tool.flwr.app]
publisher = "ffint8"

[tool.flwr.app.components]
serverapp = "ffint8.fleet.app:server_app"
clientapp = "ffint8.fleet.app:client_app"

# Defaults; override with flwr run ... --run-config "num-server-rounds=10 partition='label'".
# 0 or "" mean: all samples, the default data directory, all threads.
[tool.flwr.app.config]
{config}
"""


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def write_app(cfg: FleetConfig, directory: str | Path) -> Path:
    """Write directory/pyproject.toml: a Flower app for `flwr run`, with cfg as its run config."""
    path = Path(directory) / "pyproject.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{k} = {_toml_value(v)}" for k, v in cfg.to_run_config().items()]
    path.write_text(APP_TEMPLATE.format(config="\n".join(lines)))
    return path
