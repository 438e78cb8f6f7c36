"""A whole run: data, model, training, metrics.json and model.pt; and evaluating a checkpoint."""

from __future__ import annotations

import csv
import json
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ffint8 import __version__
from ffint8.configfile import dump_resolved
from ffint8.data import load_dataset, to_float_images
from ffint8.devices import describe_device, flush_denormals, resolve_device
from ffint8.errors import CheckpointError, ConfigError, DivergenceError, FFInt8Error
from ffint8.fileio import atomic_path, write_text_atomic
from ffint8.measure import RunMeasurement
from ffint8.models import create_model
from ffint8.quant import fastsr
from ffint8.quant.gemm import cpu_has_int8_dot, resolve_kernel
from ffint8.train.config import RESUME_MAY_CHANGE, TrainConfig
from ffint8.train.loop import EpochLog, FFTrainer

if TYPE_CHECKING:
    from ffint8.dist.ddp import DataParallel

CHECKPOINT_FORMAT = "ffint8-checkpoint"


def kernel_description(cfg: TrainConfig, device: torch.device | str = "cpu",
                       factored: bool = False) -> str:
    """Which arithmetic ran, in words for metrics.json: the GEMM kernel and the quantiser;
    factored: the dense weights stepped from their int8 gradient factors (FFTrainer.factored)."""
    text = _kernels(cfg, device)
    if factored:
        adam = "adam8" if cfg.optimizer == "adam8" else "Adam"
        rows = ""
        if cfg.ff.int8_kernel in ("auto", "vnni") and fastsr.vnni_rows():
            rows = "; its rows formed in C by " + ("AMX tiles" if fastsr.amx_rows() else "AVX-512 VNNI")
        text += f"; dense weights step from their int8 gradient factors (fused C {adam}{rows})"
    return text


def _kernels(cfg: TrainConfig, device: torch.device | str) -> str:
    if cfg.ff.algo in ("ff-fp32", "bp-fp32"):
        return "float32"
    gemm = resolve_kernel(cfg.ff.int8_kernel, device)
    if gemm == "float-exact":
        why = "no int8 dot-product unit on this CPU" if not cpu_has_int8_dot() else "requested"
        gemm = f"float-exact (exact int32 results from float32 GEMM; {why})"
    fused = fastsr.available() and torch.device(device).type == "cpu"
    quantiser = "fused C stochastic rounding" if fused else "torch stochastic rounding"
    if cfg.model != "mlp":  # the CNNs' convolutions pick their int8 kernel per op
        from ffint8.nn.conv import conv_kernel
        from ffint8.quant.conv import resolve_conv_kernel

        k = conv_kernel(cfg.ff.int8_kernel)
        convs = ", ".join(f"{op} {resolve_conv_kernel(k, device, op)}"
                          for op in ("forward", "weight", "input"))
        if fused and resolve_conv_kernel(k, device, "weight") != "reference":
            convs += " (depthwise weight: C loop)"  # quant.conv._depthwise_weight
        return f"conv: {convs}; dense: {gemm}; {quantiser}"
    return f"{gemm}; {quantiser}"


def check_device_kernel(cfg: TrainConfig, device: torch.device) -> None:
    """A ConfigError where the int8 kernel asked for cannot run on the device: the CNNs'
    float-exact convolutions run on the CPU only (a GPU's float convolutions need not be exact)."""
    int8 = cfg.ff.algo not in ("ff-fp32", "bp-fp32")
    if int8 and device.type != "cpu" and cfg.model != "mlp" and cfg.ff.int8_kernel == "float-exact":
        raise ConfigError(f"--int8-kernel float-exact: {cfg.model}'s convolutions take it on the "
                          f"CPU only, not on --device {cfg.device}; use auto (im2col there), "
                          "int_mm or reference")


def build_model(cfg: TrainConfig, in_features: int, num_classes: int) -> torch.nn.Module:
    """The model a config trains: its FF units, and the head its algorithm or prediction uses.
    The CNNs also take a width multiplier and the label-plane embedding (the MLP ignores them)."""
    return create_model(cfg.model, in_features=in_features, hidden=cfg.hidden,
                        num_classes=num_classes, classifier=cfg.ff.backprop,
                        readout=cfg.ff.predict == "softmax", width=cfg.width,
                        label_plane=cfg.label_plane)


def make_trainer(model: torch.nn.Module, cfg: TrainConfig, num_classes: int,
                 parallel: DataParallel | None = None):
    """The trainer of cfg's algorithm: FFTrainer, or BPTrainer for the backprop baselines."""
    if cfg.ff.backprop:
        if parallel is not None:
            raise ConfigError("--distributed trains the FF algorithms only, not "
                              f"{cfg.ff.algo}")
        if not hasattr(model, "linear_layers"):  # every registered model has them
            raise ConfigError(f"--algo {cfg.ff.algo}: model {cfg.model} does not list its layers "
                              "(linear_layers), which the backprop baselines quantise")
        from ffint8.bp.trainer import BPTrainer

        return BPTrainer(model, cfg, num_classes)
    return FFTrainer(model, cfg, num_classes, parallel=parallel)


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def save_checkpoint(path: Path, cfg: TrainConfig, num_classes: int, in_features: int,
                    model: torch.nn.Module | None = None, trainer: FFTrainer | None = None) -> None:
    """Write atomically (temporary file, then rename): a crash leaves the old file or the new one.

    model.pt holds the weights (state_dict); checkpoint.pt the whole trainer state (trainer),
    from which a run resumes exactly."""
    blob = {"format": CHECKPOINT_FORMAT, "version": 1, "ffint8": __version__,
            "config": cfg.to_dict(), "num_classes": num_classes, "in_features": in_features}
    if model is not None:
        blob["state_dict"] = model.state_dict()
    if trainer is not None:
        blob["trainer"] = trainer.state_dict()
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """Rebuild the model of a checkpoint; clear CheckpointErrors for missing or foreign files."""
    cfg, blob = read_checkpoint(path)
    return checkpoint_model(path, cfg, blob), cfg, blob


def read_checkpoint(path: str | Path) -> tuple[TrainConfig, dict]:
    """A checkpoint's config and contents, before any model is built (load_checkpoint's first
    half): clear CheckpointErrors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an ffint8 checkpoint")
    return TrainConfig.from_saved(blob["config"]), blob


def checkpoint_model(path: str | Path, cfg: TrainConfig, blob: dict) -> torch.nn.Module:
    """The model of a checkpoint read by read_checkpoint, its weights loaded."""
    model = build_model(cfg, blob["in_features"], blob["num_classes"])
    state = blob["state_dict"] if "state_dict" in blob else blob["trainer"]["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit model {cfg.model!r}: {first}") from None
    return model


def prediction_config(cfg: TrainConfig, blob: dict) -> TrainConfig:
    """cfg with --predict-units auto resolved, for scoring a saved model: model.pt is written
    resolved; a checkpoint.pt keeps auto and its trainer's last choice ("all" before any)."""
    return replace(cfg, ff=cfg.ff.resolved(blob.get("trainer", {}).get("predict_units")))


def expect_checkpoint(path: str | Path, model: str | None = None, algo: str | None = None) -> None:
    """A clear error when a checkpoint holds another model or algorithm than the one asked for."""
    _, cfg, _ = load_checkpoint(path)
    for flag, want, have in (("--model", model, cfg.model), ("--algo", algo, cfg.ff.algo)):
        if want is not None and want != have:
            raise CheckpointError(f"{path}: holds {cfg.model} trained with {cfg.ff.algo}, "
                                  f"not the {flag} {want} asked for")


def load_training_checkpoint(path: str | Path) -> tuple[TrainConfig, dict]:
    """The config and blob of a checkpoint.pt a run can resume from; a CheckpointError for a file
    that holds weights only (a model.pt)."""
    _, cfg, blob = load_checkpoint(path)
    if "trainer" not in blob:
        raise CheckpointError(f"{path}: holds a model's weights only (like model.pt), not the "
                              "trainer state a run resumes from")
    return cfg, blob


def resume_config(run_dir: str | Path, changes: dict[str, object] | None = None,
                  log: Callable[[str], None] = print,
                  check: Callable[[TrainConfig], None] | None = None) -> TrainConfig:
    """The config a run directory was started with, with `changes` applied: new values of the
    fields a resumed run may change (RESUME_MAY_CHANGE), None for unchanged. Where a longer
    epochs stretches the learning-rate schedule, log says so. check, if given, sees the run's
    own config first and may raise."""
    changes = {k: v for k, v in (changes or {}).items() if v is not None}
    if not set(changes) <= set(RESUME_MAY_CHANGE):
        raise ValueError(f"resume_config: {sorted(set(changes) - set(RESUME_MAY_CHANGE))} may "
                         f"not change on resume (only {', '.join(RESUME_MAY_CHANGE)})")
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"--resume {run_dir}: no checkpoint.pt there to resume from")
    cfg, _ = load_training_checkpoint(path)
    if check is not None:
        check(cfg)
    epochs = changes.get("epochs")
    if epochs is not None and epochs != cfg.epochs and cfg.lr_schedule != "constant":
        log(f"note: --epochs {epochs} replaces the run's {cfg.epochs}: the {cfg.lr_schedule} "
            f"learning-rate schedule now spans {epochs} epochs, so the result differs from a "
            f"run started with --epochs {epochs}")
    return TrainConfig.from_dict({**cfg.to_dict(), **changes}) if changes else cfg


def write_epoch_csv(path: Path, history: list[EpochLog]) -> None:
    """The per-epoch log as CSV, rewritten whole (atomically) after every epoch."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "test_accuracy", "seconds", "lambda", "unit"])
        for e in history:
            w.writerow([e.epoch, e.train_loss, e.test_accuracy, e.seconds, e.lam,
                        "" if e.unit is None else e.unit])


def open_tensorboard(out: Path):
    """A TensorBoard writer under out/tensorboard; a ConfigError if tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: "
                          "pip install 'ffint8[tensorboard]'") from None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def run_training(cfg: TrainConfig, out_dir: str | Path, progress: bool = True,
                 log: Callable[[str], None] = print, resume: bool = False,
                 tensorboard: bool = False, parallel: DataParallel | None = None) -> dict:
    """Train as cfg says; write out_dir/metrics.json and out_dir/model.pt; return the metrics.

    After every epoch out_dir/checkpoint.pt is replaced atomically; resume=True continues from
    it, so a stopped run ends with the same weights and metrics as one that never stopped.
    parallel: this process's rank in data-parallel training; only rank 0 writes files and logs."""
    lead = parallel is None or parallel.rank == 0
    flush_denormals(cfg.flush_denormals)  # before torch starts its threads: they inherit it
    device = resolve_device(cfg.device)  # before anything is written: a bad --device loses nothing
    check_device_kernel(cfg, device)
    if not lead:
        log = lambda _: None  # noqa: E731
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FFInt8Error(f"--out {out}: cannot create the directory ({exc.strerror})") from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.limit_train, cfg.limit_test, seed=cfg.seed)
    x_train, x_test = to_float_images(data.train.images), to_float_images(data.test.images)
    in_features = x_train.shape[1]
    # built on the CPU (the same initial weights on every device), then moved; the data stay in
    # host memory and the trainer moves a batch at a time
    model = build_model(cfg, in_features, data.num_classes).to(device)
    trainer = make_trainer(model, cfg, data.num_classes, parallel)
    ckpt = out / "checkpoint.pt"
    if resume:
        saved_cfg, blob = load_training_checkpoint(ckpt)
        same = dict.fromkeys(RESUME_MAY_CHANGE)
        if saved_cfg.to_dict() | same != cfg.to_dict() | same:
            raise CheckpointError(f"{ckpt}: written by a run with another configuration")
        try:
            trainer.load_state_dict(blob["trainer"])
        except (KeyError, ValueError, RuntimeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(f"{ckpt}: its trainer state does not fit this run: {first}") from None
        log(f"resuming {ckpt} after epoch {trainer.epoch}")
    if lead:  # after the checks: a refused resume leaves the run's own config.yaml
        dump_resolved(cfg.to_dict(), out / "config.yaml")
    if parallel is not None:
        parallel.check_data(len(data.train), cfg.batch_size)
        parallel.setup(trainer)
        log(f"data-parallel: {parallel.world_size} ranks ({parallel.backend}), batch {cfg.batch_size} "
            f"per rank, effective batch {cfg.batch_size * parallel.world_size}")
    kernel = kernel_description(cfg, device, factored=getattr(trainer, "factored", False))
    method = "backprop" if cfg.ff.backprop else f"look-ahead {cfg.ff.look_ahead}"
    on = "" if device.type == "cpu" else f" on {describe_device(device)}"
    log(f"{cfg.ff.algo} {cfg.model} on {data.name}: {len(data.train)} train, {len(data.test)} "
        f"test, {method}, kernel {kernel}{on}")

    writer = open_tensorboard(out) if tensorboard and lead else None

    def report(e: EpochLog) -> None:
        if lead:
            save_checkpoint(ckpt, cfg, data.num_classes, in_features, trainer=trainer)
            write_epoch_csv(out / "epochs.csv", trainer.history)
        if writer is not None:
            writer.add_scalar("train/loss", e.train_loss, e.epoch)
            if e.test_accuracy is not None:
                writer.add_scalar("test/accuracy", e.test_accuracy, e.epoch)
            writer.add_scalar("train/seconds", e.seconds, e.epoch)
            writer.flush()
        acc = "-" if e.test_accuracy is None else f"{100 * e.test_accuracy:.2f}%"
        auto = (not cfg.ff.backprop and cfg.ff.predict == "goodness"
                and cfg.ff.predict_units == "auto" and e.test_accuracy is not None)
        log(f"epoch {e.epoch:3d}  loss {e.train_loss:.4f}  test accuracy {acc:>6s}  {e.seconds:.1f}s"
            + ("" if cfg.ff.backprop else f"  lambda {e.lam:.4f}")
            + (f"  units {trainer.predict_units}" if auto else ""))

    # Memory (peak minus a baseline taken here), energy and operation counts of the training
    # loop; evaluation and checkpoint writing between epochs are left out of them.
    meas = RunMeasurement(cfg, n_train=len(data.train), in_features=in_features,
                          num_classes=data.num_classes, model=model)
    evaluate = trainer.evaluate

    def evaluate_excluded(*a):
        with meas.excluded():
            return evaluate(*a)

    def report_excluded(e: EpochLog) -> None:
        with meas.excluded():
            report(e)

    trainer.evaluate = evaluate_excluded  # (with --predict-units auto it makes its choice too)
    started = time.time()
    meas.begin()
    try:
        trainer.fit(x_train, data.train.labels, x_test, data.test.labels, progress,
                    report_excluded)
    except DivergenceError as exc:
        kept = (f"the last good checkpoint is {ckpt} (after epoch {trainer.epoch})"
                if trainer.epoch else "no epoch finished, so no checkpoint was written")
        raise DivergenceError(f"{exc}; {kept}") from None
    finally:
        if writer is not None:
            writer.close()
    predicting = trainer.prediction_config() if hasattr(trainer, "prediction_config") else cfg
    metrics = {
        "model": cfg.model, "dataset": data.name, "algo": cfg.ff.algo,
        "look_ahead": None if cfg.ff.backprop else cfg.ff.look_ahead,
        "epochs": [e.to_dict() for e in trainer.history],
        "test_accuracy": trainer.history[-1].test_accuracy,
        "train_seconds": sum(e.seconds for e in trainer.history),
        "wall_seconds": time.time() - started,
        "kernel": kernel, "device": describe_device(device), "config": cfg.to_dict(),
        "environment": {"ffint8": __version__, "torch": torch.__version__,
                        "python": platform.python_version(), "machine": platform.machine(),
                        "threads": torch.get_num_threads()},
    }
    if not cfg.ff.backprop and cfg.ff.predict == "goodness":
        metrics["predict_units"] = predicting.ff.predict_units  # auto: the units it chose
    metrics.update(meas.end())
    if parallel is not None:
        metrics["distributed"] = parallel.describe(cfg.batch_size)
    if lead:
        save_checkpoint(out / "model.pt", predicting, data.num_classes, in_features, model=model)
        write_json_atomic(out / "metrics.json", metrics)
    return metrics


def evaluate_checkpoint(path: str | Path, data_dir: str | None = None,
                        dataset: str | None = None, limit_test: int | None = None,
                        predict_units: str | None = None, device: str = "cpu") -> dict:
    """Test accuracy of a saved model on its data set (or another of the same input size);
    predict_units overrides the units an FF goodness prediction sums; device: where to compute
    (a --device name)."""
    where = resolve_device(device)
    cfg, blob = read_checkpoint(path)
    # score with the arithmetic the run trained with; before any torch work builds the model,
    # since worker threads take the setting only when they start (train does the same)
    flush_denormals(cfg.flush_denormals)
    model = checkpoint_model(path, cfg, blob)
    model.to(where)
    if predict_units is not None:
        if cfg.ff.backprop or cfg.ff.predict != "goodness":
            raise ConfigError(f"--predict-units: {path} predicts with "
                              f"{'backprop' if cfg.ff.backprop else 'a softmax readout'}, "
                              "not with summed goodness")
        cfg = replace(cfg, ff=replace(cfg.ff, predict_units=predict_units))
    else:
        cfg = prediction_config(cfg, blob)
    name = dataset or cfg.dataset
    data = load_dataset(name, data_dir if data_dir is not None else cfg.data_dir,
                        limit_test=limit_test, seed=cfg.seed)
    x_test = to_float_images(data.test.images)
    if x_test.shape[1] != blob["in_features"]:
        raise CheckpointError(f"{path}: model takes {blob['in_features']} inputs but {name} "
                              f"images have {x_test.shape[1]}")
    trainer = make_trainer(model, cfg, blob["num_classes"])
    if predict_units == "auto":  # chosen on the data set's training images, as in training
        # (the uint8 images: only the sampled rows are converted to float)
        trainer.use_for_selection(data.train.images, data.train.labels, len(data.test))
    acc = trainer.evaluate(x_test, data.test.labels)
    result = {"checkpoint": str(path), "model": cfg.model, "algo": cfg.ff.algo, "dataset": name,
              "test_samples": len(data.test), "test_accuracy": acc}
    if predict_units is not None:
        result["predict_units"] = getattr(trainer, "predict_units", predict_units)
    return result
