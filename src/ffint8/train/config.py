"""Frozen, validated configuration of an FF run. The CLI maps flags onto these."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from ffint8.errors import ConfigError

FF_ALGOS = ("ff-int8", "ff-fp32")
BP_ALGOS = ("bp-fp32", "bp-int8", "bp-ui8", "bp-gdai8")  # backprop baselines (ffint8.bp)
ALGOS = FF_ALGOS + BP_ALGOS
LOOK_AHEAD = ("none", "collab", "chain")
GOODNESS = ("mean", "sum")
LOSSES = ("ff", "symba")
NORMS = ("rms", "l2")
SCHEDULES = ("simultaneous", "greedy")
OPTIMIZERS = ("adam", "sgd", "adam8", "adamw")
LR_SCHEDULES = ("constant", "cooldown", "cosine")
PREDICT = ("goodness", "softmax")
PREDICT_UNITS = ("all", "skip-first", "auto")
NEGATIVES = ("random", "hard")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"invalid {name} {value!r}; choose one of: {', '.join(choices)}")


def scored_units(n_units: int, which: str = "skip-first") -> list[int]:
    """The units a prediction reads, of n_units: all of them, or all but the first when there
    are several ("skip-first"). "auto" is not a set of units: a trainer resolves it to one."""
    if which not in ("all", "skip-first"):
        raise ValueError(f"scored_units: {which!r} is not a set of units (auto is resolved by "
                         "the trainer)")
    return list(range(1 if which == "skip-first" and n_units > 1 else 0, n_units))


@dataclass(frozen=True)
class FFConfig:
    """How FF units are trained: loss, look-ahead and arithmetic (PAPER.md sections 1-3)."""

    algo: str = "ff-int8"
    # chain look-ahead with lambda +0.2 per epoch and the lr cooldown (TrainConfig.lr_schedule):
    # the measured best of issue 8 (docs/results.md); --preset paper gives the paper's settings.
    look_ahead: str = "chain"
    goodness: str = "mean"
    theta: float = 2.0
    loss: str = "ff"  # eqs. 1-2, or "symba": softplus(-alpha (G_pos - G_neg)) per pair
    symba_alpha: float = 4.0
    peer_weight: float = 0.03  # peer normalisation added to every unit's loss (0: off)
    norm: str = "rms"
    lambda_start: float = 0.0
    lambda_step: float = 0.2  # added after every epoch (the paper: 0.001)
    lambda_max: float | None = None  # where the schedule stops rising (None: it never stops)
    chain_depth: int | None = None  # chain: how many later units feed back (None: all)
    schedule: str = "simultaneous"  # Algorithm 1, or greedy (unit after unit)
    int8_kernel: str = "auto"
    weight_channel: bool = False  # per-output-unit weight scales instead of one per tensor
    # goodness: score every label by summed goodness (one forward per label); softmax: a linear
    # readout on the normalised activities of a neutral-label pass (one forward in all).
    predict: str = "goodness"
    # goodness prediction sums the goodness of these units: "all" (the paper), "skip-first",
    # all but the first when there are several (as Hinton's FF code does), or "auto": at every
    # evaluation whichever of the two labels a fixed sample of the training images better.
    # skip-first is data-dependent: +0.2 to +0.7 points on Fashion-MNIST after 10 epochs of the
    # default, 0.6-6.3 points worse for plain FF and most single levers, and far worse on data
    # whose first unit already separates the classes while later ones still learn (method.md).
    predict_units: str = "auto"
    negatives: str = "random"  # hard: wrong labels drawn from the model's current prediction

    def __post_init__(self) -> None:
        _choice("--algo", self.algo, ALGOS)
        _choice("--look-ahead", self.look_ahead, LOOK_AHEAD)
        _choice("--goodness", self.goodness, GOODNESS)
        _choice("--loss", self.loss, LOSSES)
        if self.peer_weight < 0:
            raise ConfigError(f"--peer-weight must be >= 0, got {self.peer_weight}")
        if not self.symba_alpha > 0:
            raise ConfigError(f"--symba-alpha must be > 0, got {self.symba_alpha}")
        _choice("--norm", self.norm, NORMS)
        _choice("--schedule", self.schedule, SCHEDULES)
        _choice("--predict", self.predict, PREDICT)
        _choice("--predict-units", self.predict_units, PREDICT_UNITS)
        _choice("--negatives", self.negatives, NEGATIVES)
        from ffint8.quant.gemm import KERNELS

        _choice("--int8-kernel", self.int8_kernel, KERNELS)
        if self.chain_depth is not None and self.chain_depth < 1:
            raise ConfigError(f"--chain-depth must be at least 1, got {self.chain_depth}")
        if self.lambda_start < 0 or self.lambda_step < 0:
            raise ConfigError("--lambda-start and --lambda-step must be >= 0")
        if self.lambda_max is not None and not self.lambda_max >= 0:
            raise ConfigError(f"--lambda-max must be >= 0, got {self.lambda_max}")

    @property
    def int8(self) -> bool:
        """FF in int8 arithmetic (the backprop baselines keep their own flags)."""
        return self.algo == "ff-int8"

    @property
    def backprop(self) -> bool:
        return self.algo in BP_ALGOS

    def resolved(self, chosen: str | None = None) -> FFConfig:
        """This config with predict_units auto replaced by the units a trainer chose (`chosen`),
        or by all where none has chosen yet (as a trainer does before its first evaluation)."""
        if self.predict_units != "auto":
            return self
        return replace(self, predict_units=chosen or "all")

    def scored_units(self, n_units: int) -> list[int]:
        """Indices of the units whose goodness the goodness prediction sums, of n_units in all
        (auto: see resolved)."""
        return scored_units(n_units, self.resolved().predict_units)

    def lam(self, epoch: int) -> float:
        """lambda during 0-based epoch `epoch`: starts at lambda_start, + lambda_step per epoch,
        at most lambda_max where it is set."""
        lam = self.lambda_start + self.lambda_step * epoch
        return lam if self.lambda_max is None else min(lam, self.lambda_max)


# Fields whose default has changed since they were added: a saved run's config written before a
# field existed gets the value that reproduces what that run did, not today's default.
FF_BEFORE_FIELD = {"peer_weight": 0.0, "predict_units": "all"}
TRAIN_BEFORE_FIELD = {"flush_denormals": False}

# TrainConfig fields a resumed run may change, since nothing trained depends on them. A run may
# move to a machine with other cores: float32 sums may then round differently in the last bits;
# int8 ones cannot.
RESUME_MAY_CHANGE = ("epochs", "eval_every", "eval_batch_size", "norm_batches", "threads", "device")


def resume_may_change_flags() -> str:
    """RESUME_MAY_CHANGE as the flags a message names: "--epochs, --eval-every, ... and --x"."""
    flags = ["--" + name.replace("_", "-") for name in RESUME_MAY_CHANGE]
    return ", ".join(flags[:-1]) + " and " + flags[-1]


@dataclass(frozen=True)
class TrainConfig:
    """One training run: model, data, optimiser, budget, output."""

    model: str = "mlp"
    hidden: tuple[int, ...] = (1000, 1000)
    width: float = 1.0  # CNNs: channel width multiplier (the MLP uses hidden)
    label_plane: bool = False  # CNNs: also give the label as C constant input channels
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.003
    optimizer: str = "adam"
    lr_schedule: str = "cooldown"  # linear to 0 over the second half of training (or constant, cosine)
    weight_decay: float = 0.0
    seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    # images scored at a time (a score does not depend on it). FF goodness prediction runs a row
    # per image and label: at 1000 images its 10,000 rows of the MLP put the process's peak 190 MB
    # above the training loop's, at 250 105 MB, and scored the test set 2x faster (rows that stay
    # in the cache); BP scores alike at either (session 19, AMD EPYC)
    eval_batch_size: int = 250
    eval_every: int = 1  # test accuracy after every N-th epoch, and always after the last
    # FF CNNs: before each evaluation the batch norms' running statistics are re-estimated over
    # this many training batches (ffint8.train.ff_units.estimate_norm_statistics); 0: the
    # moving averages of training are kept
    norm_batches: int = 50
    threads: int | None = None
    device: str = "cpu"  # cpu, cuda, cuda:N or auto (ffint8.devices)
    # flush float32 denormals to zero on the CPU (ffint8.devices.flush_denormals): trained weights
    # and gradients drift into the denormal range, where some CPUs slow down 3-100x
    flush_denormals: bool = True
    ff: FFConfig = FFConfig()

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        _choice("--optimizer", self.optimizer, OPTIMIZERS)
        _choice("--lr-schedule", self.lr_schedule, LR_SCHEDULES)
        for name in ("limit_train", "limit_test"):
            v = getattr(self, name)
            if v is not None and v < 1:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be at least 1, got {v}")
        if not self.width > 0:
            raise ConfigError(f"--width must be > 0, got {self.width}")
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"--hidden must list positive layer widths, got {self.hidden}")
        if not self.hidden and not self.ff.backprop:  # backprop: a linear classifier is fine
            raise ConfigError("--hidden: an FF model needs at least one hidden layer")
        if self.eval_batch_size < 1:
            raise ConfigError(f"--eval-batch-size must be at least 1, got {self.eval_batch_size}")
        if self.eval_every < 1:
            raise ConfigError(f"--eval-every must be at least 1, got {self.eval_every}")
        if self.norm_batches < 0:
            raise ConfigError(f"--norm-batches must be >= 0, got {self.norm_batches}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        from ffint8.devices import check_device_name

        check_device_name(self.device)

    def evaluates_after(self, epoch: int, last: int) -> bool:
        """Whether the test set is scored after 1-based epoch `epoch` of `last`."""
        return epoch % self.eval_every == 0 or epoch >= last

    def lr_at(self, progress: float) -> float:
        """Learning rate at a point of training, progress in [0, 1) (fraction of all steps)."""
        if self.lr_schedule == "cooldown":
            return self.lr * min(1.0, 2.0 * (1.0 - progress))
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_saved(cls, d: dict) -> TrainConfig:
        """The config a saved run (checkpoint, model.pt) was written with: fields it predates take
        the values that reproduce that run (FF_BEFORE_FIELD), not today's defaults."""
        return cls.from_dict({**TRAIN_BEFORE_FIELD, **d,
                              "ff": {**FF_BEFORE_FIELD, **d.get("ff", {})}})

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["ff"] = FFConfig(**kw.get("ff", {}))
        kw["hidden"] = tuple(kw.get("hidden", ()))
        return cls(**kw)


# Named option sets (keys: TrainConfig / FFConfig field names, as the CLI's flag destinations),
# applied under a --config file and explicit flags. "paper": the FF-INT8 paper's own settings
# (PAPER.md sections 3-5), kept whole so a change of the defaults does not move them.
PRESETS: dict[str, dict] = {
    "paper": {
        "model": "mlp", "hidden": (1000, 1000), "batch_size": 32, "lr": 0.003,
        "optimizer": "adam", "lr_schedule": "constant", "weight_decay": 0.0,
        "algo": "ff-int8", "look_ahead": "collab", "goodness": "mean", "theta": 2.0,
        "loss": "ff", "peer_weight": 0.0, "norm": "rms", "lambda_start": 0.0,
        "lambda_step": 0.001, "lambda_max": None, "chain_depth": None, "schedule": "simultaneous",
        "predict": "goodness", "predict_units": "all", "negatives": "random",
    },
}


def preset_config(name: str, **overrides) -> TrainConfig:
    """The TrainConfig of preset `name` (PRESETS), then `overrides` (TrainConfig or FFConfig field
    names): what `ffint8 train --preset name` with those flags gives, for code that builds its
    config in-process (benchmarks that must keep the settings their recorded figures used)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    values = {**PRESETS[name], **overrides}
    ff_names = {f.name for f in fields(FFConfig)}
    ff = FFConfig(**{k: v for k, v in values.items() if k in ff_names})
    return TrainConfig(**{k: v for k, v in values.items() if k not in ff_names}, ff=ff)
