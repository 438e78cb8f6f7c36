"""`ffint8 train --distributed data|pipeline`, one process per rank under torchrun.

data:     run_training on every rank with a DataParallel (ffint8.dist.ddp); rank 0 writes.
pipeline: rank r trains unit r (ffint8.dist.pipeline); after every epoch each rank broadcasts
          its unit, rank 0 evaluates the whole model and writes epochs.csv, model.pt and
          metrics.json as run_training does.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from ffint8 import __version__
from ffint8.configfile import dump_resolved
from ffint8.data import load_dataset, to_float_images
from ffint8.dist.ddp import DataParallel, init_process_group, shutdown
from ffint8.dist.pipeline import DEPTH, DistLink, Stage, batches, check_pipeline
from ffint8.errors import ConfigError
from ffint8.devices import flush_denormals
from ffint8.train.config import TrainConfig
from ffint8.train.loop import EpochLog, FFTrainer
from ffint8.train.run import (
    build_model,
    kernel_description,
    run_training,
    save_checkpoint,
    write_epoch_csv,
    write_json_atomic,
)

MODES = ("data", "pipeline")


def run_distributed(mode: str, cfg: TrainConfig, out_dir: str | Path, grad_int8: bool = False,
                    progress: bool = True, resume: bool = False, tensorboard: bool = False,
                    log: Callable[[str], None] = print) -> dict | None:
    """Join torchrun's process group, train, leave it. Returns the metrics on rank 0, else None."""
    if mode not in MODES:
        raise ConfigError(f"invalid --distributed {mode!r}; choose one of: {', '.join(MODES)}")
    if grad_int8 and mode != "data":
        raise ConfigError("--grad-int8 applies to --distributed data (pipeline stages exchange "
                          "activations, not gradients)")
    if mode == "pipeline" and (resume or tensorboard):
        raise ConfigError("--distributed pipeline does not support --resume or --tensorboard")
    if cfg.device != "cpu":
        raise ConfigError(f"--distributed trains on the CPU (gloo); --device {cfg.device} is not "
                          "supported with it yet")
    rank, world, backend = init_process_group("cpu")
    try:
        if mode == "data":
            metrics = run_training(cfg, out_dir, progress, log, resume, tensorboard,
                                   parallel=DataParallel(rank, world, grad_int8, backend))
        else:
            metrics = run_pipeline_training(cfg, out_dir, rank, world, log)
        return metrics if rank == 0 else None
    finally:
        shutdown()


def run_pipeline_training(cfg: TrainConfig, out_dir: str | Path, rank: int, world: int,
                          log: Callable[[str], None] = print) -> dict:
    """This rank's part of a layer-pipelined run (the process group is up)."""
    lead = rank == 0
    out = Path(out_dir)
    flush_denormals(cfg.flush_denormals)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # every rank builds the same initial model
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.limit_train, cfg.limit_test, seed=cfg.seed)
    x_train, x_test = to_float_images(data.train.images), to_float_images(data.test.images)
    in_features, num_classes = x_train.shape[1], data.num_classes
    model = build_model(cfg, in_features, num_classes)
    units = list(model.units)
    check_pipeline(cfg, world, len(units))
    stage = Stage(units[rank], rank, world, cfg,
                  prev=DistLink(rank - 1) if rank > 0 else None,
                  next=DistLink(rank + 1, DEPTH) if rank < world - 1 else None)
    generator = torch.Generator().manual_seed(cfg.seed)  # shuffling and negatives, rank 0 only
    n_steps = -(-x_train.shape[0] // cfg.batch_size)
    evaluator = FFTrainer(model, cfg, num_classes)
    evaluator.use_for_selection(x_train, data.train.labels, len(data.test))  # --predict-units auto
    evaluator.norm_source = (x_train, data.train.labels)  # batch-norm statistics (CNNs)
    kernel = kernel_description(cfg)
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        dump_resolved(cfg.to_dict(), out / "config.yaml")
        log(f"{cfg.ff.algo} {cfg.model} on {data.name}: {len(data.train)} train, "
            f"{len(data.test)} test, look-ahead {cfg.ff.look_ahead}, kernel {kernel}")
        log(f"layer pipeline: {world} ranks, rank r trains unit r")
    history: list[EpochLog] = []
    started = time.time()
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        feed = batches(x_train, data.train.labels, num_classes, cfg.batch_size, generator) if lead else None
        loss = stage.run_epoch(epoch, n_steps, feed)
        for link in (stage.prev, stage.next):
            if link is not None:
                link.flush()
        losses = torch.zeros(world)
        losses[rank] = loss
        dist.all_reduce(losses)  # also waits for the last stage: the epoch ends here
        seconds = time.perf_counter() - start
        with torch.no_grad():
            for r, unit in enumerate(units):
                for p in unit.parameters():
                    dist.broadcast(p.data, src=r)
        lam = cfg.ff.lam(epoch) if cfg.ff.look_ahead != "none" else 0.0
        scored = lead and cfg.evaluates_after(epoch + 1, cfg.epochs)
        evaluator.epoch = epoch  # the norm statistics' batches are drawn per epoch
        acc = evaluator.evaluate(x_test, data.test.labels) if scored else None
        history.append(EpochLog(epoch + 1, float(losses.sum()), acc, seconds, lam))
        if lead:
            write_epoch_csv(out / "epochs.csv", history)
            shown = "-" if acc is None else f"{100 * acc:.2f}%"
            log(f"epoch {epoch + 1:3d}  loss {losses.sum():.4f}  test accuracy {shown:>6s}  "
                f"{seconds:.1f}s  lambda {lam:.4f}")
    metrics = {
        "model": cfg.model, "dataset": data.name, "algo": cfg.ff.algo,
        "look_ahead": cfg.ff.look_ahead, "epochs": [e.to_dict() for e in history],
        "test_accuracy": history[-1].test_accuracy,
        "train_seconds": sum(e.seconds for e in history), "wall_seconds": time.time() - started,
        "kernel": kernel, "config": cfg.to_dict(),
        "environment": {"ffint8": __version__, "torch": torch.__version__,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "threads": torch.get_num_threads()},
        "distributed": {"mode": "pipeline", "world_size": world, "backend": dist.get_backend(),
                        "updates": "one process's, exactly (no stale weights)"},
    }
    if cfg.ff.predict == "goodness":
        metrics["predict_units"] = evaluator.predict_units  # auto: the units it chose
    if lead:
        save_checkpoint(out / "model.pt", evaluator.prediction_config(), num_classes, in_features,
                        model=model)
        write_json_atomic(out / "metrics.json", metrics)
    return metrics
