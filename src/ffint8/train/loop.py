"""The FF training loop: batches, positives and negatives, the lambda schedule, evaluation."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from ffint8 import heap
from ffint8.data import (
    embed_label,
    embed_neutral,
    hard_negative_labels,
    sample_negative_labels,
    to_float_images,
)
from ffint8.devices import synchronize
from ffint8.errors import ConfigError, DivergenceError
from ffint8.nn import functional as FF
from ffint8.nn.dense import FFDense
from ffint8.quant import QTensor, fastsr
from ffint8.train import ff_units
from ffint8.train.config import TrainConfig, scored_units
from ffint8.train.factored import FACTORED_OPTIMIZERS, FactoredAdam
from ffint8.train.ff import (
    SeedStream,
    ff_gradients,
    forward_records,
    outputs_each_label,
    readout_features,
    readout_gradients,
)

if TYPE_CHECKING:
    from ffint8.dist.ddp import DataParallel


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    test_accuracy: float | None
    seconds: float  # training time of the epoch, evaluation excluded
    lam: float
    unit: int | None = None  # greedy schedule: the unit trained in this epoch

    @classmethod
    def from_dict(cls, d: dict) -> EpochLog:
        return cls(d["epoch"], d["train_loss"], d["test_accuracy"], d["seconds"], d["lambda"],
                   d.get("unit"))

    def to_dict(self) -> dict:
        d = {"epoch": self.epoch, "train_loss": self.train_loss,
             "test_accuracy": self.test_accuracy, "seconds": self.seconds, "lambda": self.lam}
        if self.unit is not None:
            d["unit"] = self.unit
        return d


FINITE_CHUNK = 1 << 16  # all_finite's piece of a CPU tensor without the C kernel


def all_finite(p: torch.Tensor) -> bool:
    """Whether every value of p is finite, without a p-sized temporary on the CPU: torch.isfinite
    makes a float |p| and two bool tensors, 4.8 MB for a 1000 x 1000 weight, which set the
    training loop's peak memory at the end of an FF-INT8 epoch with adam8. One C pass (max|p|
    is NaN once a value is NaN or Inf), else pieces of FINITE_CHUNK values."""
    p = p.detach()
    if p.device.type != "cpu":
        return bool(torch.isfinite(p).all())
    amax = fastsr.absmax(p)
    if amax is not None:
        return amax == amax  # not NaN
    flat = p.reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + FINITE_CHUNK]).all())
               for i in range(0, flat.numel(), FINITE_CHUNK))


def check_finite(groups: list[list[torch.Tensor]], epoch: int, steps: int, name: str) -> None:
    """A DivergenceError naming the first group (unit or layer) with a non-finite parameter."""
    for i, params in enumerate(groups):
        if not all(all_finite(p) for p in params):
            raise DivergenceError.at(epoch + 1, steps,
                                     f"the weights of {name} {i + 1} are no longer finite")


def accuracy(predict, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Fraction of rows of x whose highest score under predict ((B, D) -> (B, C)) is y's label,
    scored batch_size rows at a time."""
    correct = 0
    for i in range(0, x.shape[0], batch_size):  # scores may come from a GPU; x and y stay here
        correct += int((predict(x[i : i + batch_size]).argmax(1).cpu() == y[i : i + batch_size]).sum())
    return correct / x.shape[0]


def make_optimizer(params, cfg: TrainConfig, factored: bool = False) -> torch.optim.Optimizer:
    """cfg's optimiser; factored (uses_factored_adam): Adam and AdamW as FactoredAdam (adam8
    steps from factors itself)."""
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam8":  # Adam with its moments in 8 bits: a quarter of Adam's state
        from ffint8.train.adam8 import Adam8

        return Adam8(params, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed,
                     kernel=cfg.ff.int8_kernel)
    # adamw: weight decay decoupled from the gradient (p *= 1 - lr * wd), not Adam's L2 term,
    # which Adam's normalisation turns into a full-size step for weights with small gradients.
    if factored:
        return FactoredAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            decoupled=cfg.optimizer == "adamw", kernel=cfg.ff.int8_kernel)
    adam = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel over all parameters, several times faster than the for-each loop at
    # FF's small batches, where the optimiser weighs as much as the GEMMs.
    try:
        return adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def uses_factored_adam(cfg: TrainConfig, dense: bool, device: torch.device | str = "cpu",
                       parallel: bool = False) -> bool:
    """Whether FFTrainer steps dense FF-INT8 weights from their int8 gradient factors
    (train/factored.py): Adam, AdamW or adam8, on the CPU with the C kernel built, one process."""
    return (dense and cfg.ff.int8 and not parallel
            and cfg.optimizer in FACTORED_OPTIMIZERS
            and torch.device(device).type == "cpu" and fastsr.available())


# --predict-units auto: the training sample its choice is made on (at most as many images as the
# test set), and the margin (a fraction of the sample) by which skip-first must beat all
SELECTION_SAMPLES = 5000
SELECTION_SEED = 0x5E1EC7  # added to the run's seed: the sample's own generator
SELECTION_MARGIN = 0.001
NORM_SEED = 0xB47C4  # added to the run's seed and the epoch: the norm statistics' batches
# Goodness prediction on CNN units forwards at most this many (image, label) rows at once. Their
# feature maps are large: 10 labels x a 1000-image evaluation batch in one forward is 10,000 rows,
# 2 GB per activation of a full-width ResNet-18. Scoring 200 images on a quarter-width
# MobileNet-v2 (1 thread) took 37 s as one forward of 2000 rows, 13.5-14.5 s in 128-row pieces.
CNN_EVAL_ROWS = 128


def float_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x[rows] as float32 inputs: x is either those already or a data set's uint8 images, of which
    only the chosen rows are converted."""
    xb = x[rows]
    return to_float_images(xb) if xb.dtype == torch.uint8 else xb


@dataclass
class FFTrainer:
    """Trains the FF units of `model` with the settings of `cfg`; holds all mutable run state."""

    model: torch.nn.Module
    cfg: TrainConfig
    num_classes: int
    epoch: int = 0
    history: list[EpochLog] = field(default_factory=list)
    parallel: DataParallel | None = None  # data-parallel: this rank's rows, gradient averaging
    factored_adam: bool = True  # False: always form float32 weight gradients (for comparisons)

    def __post_init__(self) -> None:
        self.units = list(self.model.units)
        # where the model is (--device): batches go there one at a time; the data, shuffling
        # and negative labels stay on the CPU, so every device trains on the same batches
        self.device = next(self.model.parameters()).device
        # dense units: closed-form gradients (train/ff.py); other units (convolutional blocks):
        # autograd unit by unit (train/ff_units.py)
        self.dense = all(isinstance(u, FFDense) for u in self.units)
        self.readout = getattr(self.model, "readout", None)
        if self.cfg.ff.predict == "softmax" and self.readout is None:
            raise ConfigError(f"--predict softmax needs a model built with a readout; "
                              f"{self.cfg.model!r} was built without one")
        # FF-INT8 dense units with Adam or adam8: each weight steps from the int8 factors of its
        # gradient (train/factored.py); biases, readout and every other case step as usual.
        self.factored = self.factored_adam and uses_factored_adam(
            self.cfg, self.dense, self.device, parallel=self.parallel is not None)
        self.optimizer = make_optimizer(self.model.parameters(), self.cfg, self.factored)
        # Units step one at a time, as soon as their gradients are final, so only one unit's
        # gradients are alive (the same update: the optimisers here are elementwise).
        # Data-parallel training averages all gradients first, so it steps them together.
        self.per_unit_update = self.parallel is None
        self.generator = torch.Generator().manual_seed(self.cfg.seed)  # shuffling, negatives
        self.seeds = SeedStream(self.cfg.seed)  # stochastic rounding
        # the units goodness prediction sums: the config's, or with "auto" the last choice of
        # choose_predict_units ("all" until the first)
        self.predict_units = self.cfg.ff.resolved().predict_units
        self.selection: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # auto's
        # training images and labels for refresh_norm_statistics before each evaluation
        self.norm_source: tuple[torch.Tensor, torch.Tensor] | None = None

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this trainer stands (between epochs)."""
        return {"epoch": self.epoch, "history": [e.to_dict() for e in self.history],
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "sr_counter": self.seeds.counter,
                "predict_units": self.predict_units}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.seeds.counter = int(state["sr_counter"])
        self.epoch = int(state["epoch"])
        self.history = [EpochLog.from_dict(d) for d in state["history"]]
        self.predict_units = state.get("predict_units", self.predict_units)

    def prediction_config(self) -> TrainConfig:
        """cfg with --predict-units auto resolved to the current choice: what model.pt records,
        so that eval, predict and export score as the run's last evaluation did."""
        return replace(self.cfg, ff=self.cfg.ff.resolved(self.predict_units))

    def _batch(self, xb: torch.Tensor, yb: torch.Tensor,
               neg: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Positives then negatives (B, D) each, stacked to (2B, D); targets (2B,).
        neg: the wrong labels (default: drawn uniformly)."""
        b = xb.shape[0]
        if neg is None:
            neg = sample_negative_labels(yb, self.num_classes, self.generator)
        if self.parallel is not None:  # every rank draws the global batch and keeps its rows
            rows = self.parallel.rows(b)
            xb, yb, neg, b = xb[rows], yb[rows], neg[rows], rows.stop - rows.start
        x = torch.empty(2 * b, xb.shape[1], dtype=xb.dtype)
        embed_label(xb, yb, self.num_classes, out=x[:b])
        embed_label(xb, neg, self.num_classes, out=x[b:])
        t = torch.cat([torch.ones(b, dtype=xb.dtype), torch.zeros(b, dtype=xb.dtype)])
        return x.to(self.device), t.to(self.device)

    def train_epoch(self, x_train: torch.Tensor, y_train: torch.Tensor,
                    unit: int | None = None, progress: bool = False) -> tuple[float, float]:
        """One pass over the data. unit: greedy schedule, train only units[unit] (and forward
        through the ones below it). Returns (mean summed loss per step, seconds)."""
        ff = self.cfg.ff
        lam = ff.lam(self.epoch) if ff.look_ahead != "none" else 0.0
        units = self.units if unit is None else self.units[: unit + 1]
        n = x_train.shape[0]
        bs = self.cfg.batch_size * (1 if self.parallel is None else self.parallel.world_size)
        perm = torch.randperm(n, generator=self.generator)
        steps = range(0, n, bs)
        bar = tqdm(steps, desc=f"epoch {self.epoch + 1}", unit="step", leave=False,
                   disable=not (progress and sys.stderr.isatty()))
        total = torch.zeros((), device=self.device)
        phase = self.epoch % self.cfg.epochs  # greedy: each unit runs the schedule afresh
        start = time.perf_counter()
        for step, i in enumerate(bar):
            lr = self.cfg.lr_at((phase + step / len(steps)) / self.cfg.epochs)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            idx = perm[i : i + bs]
            xb, yb = x_train[idx], y_train[idx]
            neg, r_loss = None, torch.zeros((), device=self.device)
            if ff.predict == "softmax":  # one neutral-label pass: readout update, its prediction
                neutral = embed_neutral(xb, self.num_classes).to(self.device)
                records = forward_records(self.units, neutral, ff, None)
                feats = readout_features(records, self.model.readout_units, ff.norm)
                r_loss, logits = readout_gradients(self.readout, feats, yb.to(self.device))
                if ff.negatives == "hard":  # drawn on the CPU, as uniform negatives are
                    neg = hard_negative_labels(logits.cpu(), yb, self.generator)
            elif ff.negatives == "hard":  # goodness prediction: one forward per label
                neg = hard_negative_labels(self.predict_scores(xb).cpu(), yb, self.generator)
            x, t = self._batch(xb, yb, neg)
            if not self.dense:
                step_fn = ff_units.ff_gradients
            elif self.parallel is not None:  # peer normalisation over the global batch's rows
                step_fn = partial(ff_gradients, batch_mean=self.parallel.batch_mean(2 * xb.shape[0]))
            else:
                step_fn = ff_gradients
            if self.per_unit_update:
                on_unit, extra = partial(self._step_unit, trained=unit), {}
                if self.factored:  # unit l's weight gradient as int8 factors, stepped in on_unit
                    extra["factors"] = {}
                    on_unit = partial(on_unit, factors=extra["factors"])
                losses = step_fn(units, x, t, ff, lam, self.seeds, on_unit=on_unit, **extra)
            else:
                losses = step_fn(units, x, t, ff, lam, self.seeds)
            if self.parallel is not None:  # the global batch's gradients and losses, all ranks
                losses = self.parallel.reduce(self.model, losses, xb.shape[0])
            if not bool(torch.isfinite(r_loss)):
                raise DivergenceError.at(self.epoch + 1, step + 1,
                                         f"the softmax readout's loss is {r_loss.item()}")
            if not bool(torch.isfinite(losses).all()):
                bad = int((~torch.isfinite(losses)).nonzero()[0])
                raise DivergenceError.at(self.epoch + 1, step + 1,
                                         f"the loss of unit {bad + 1} is {losses[bad].item()}")
            if not self.per_unit_update:
                if unit is not None:
                    for u in self.units[:unit]:
                        for p in u.parameters():
                            p.grad = None  # greedy: lower units are frozen
                self.optimizer.step()
            total += losses.sum()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{losses.sum().item():.4f}")
            heap.after_step(step)  # what the step freed back to the system, every few steps
        synchronize(self.device)  # a GPU's queued work belongs to the epoch's time
        seconds = time.perf_counter() - start
        bar.close()
        # The last update must not leave a NaN for the checkpoint.
        check_finite([list(u.parameters()) for u in units], self.epoch, len(steps), "unit")
        return total.item() / len(steps), seconds

    def _step_unit(self, l: int, trained: int | None,
                   factors: dict[int, tuple[QTensor, QTensor]] | None = None) -> None:
        """Per-unit update: step unit l (and the softmax readout, whose gradient is set before
        the units'), then free the gradients. trained: the greedy schedule's unit; those below
        it are frozen, so their gradients are dropped unused. factors: unit l's weight gradient
        as int8 factors (FactoredAdam), where its .grad is None."""
        pending = factors.pop(l, None) if factors else None
        if trained is None or l == trained:
            if pending is not None:
                unit = self.units[l]
                amax = self.optimizer.step_factored(unit.weight, *pending)
                if amax is not None and not self.cfg.ff.weight_channel:
                    unit.cache_int8_weight(amax)  # the next forward's int8 weight, made now
            # steps the parameters that have a .grad: unit l's (+ readout); FactoredAdam's
            # step_direct without torch.optim's per-step machinery where they fit its kernel
            direct = getattr(self.optimizer, "step_direct", None)
            if direct is None or not direct([p for group in self.optimizer.param_groups
                                             for p in group["params"] if p.grad is not None]):
                self.optimizer.step()
        # zero_grad(set_to_none=True) without its profiler record and dynamo guard (0.01-0.06
        # ms a call, one call per unit and step)
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def goodness_per_unit(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Goodness prediction's parts: every unit's goodness for every label, (B, D) images ->
        [(B, C)] * units, from one forward of (C * B) rows with each label embedded in turn."""
        x = x.to(self.device)
        b, c = x.shape[0], self.num_classes
        if self.dense:  # the first unit's product with the image is shared by all labels
            ys = outputs_each_label(self.units, x, c, self.cfg.ff)
            gs = [FF.goodness(y, self.cfg.ff.goodness) for y in ys]  # (C * B,) each
        else:  # label-major rows, CNN_EVAL_ROWS at a time (a score does not depend on its batch)
            chunks = []
            for i in range(0, c * b, CNN_EVAL_ROWS):
                rows = torch.arange(i, min(i + CNN_EVAL_ROWS, c * b), device=x.device)
                chunks.append(ff_units.goodness_per_unit(
                    self.units, embed_label(x[rows % b], rows // b, c), self.cfg.ff))
            gs = [torch.cat(unit_parts) for unit_parts in zip(*chunks)]
        return [g.reshape(c, b).t() for g in gs]

    @torch.no_grad()
    def predict_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores: (B, D) images -> (B, C). INT8 inference rounds to nearest.

        goodness: goodness summed over units (self.predict_units) for every label. softmax: the
        readout's logits from one neutral-label pass."""
        ff = self.cfg.ff
        if ff.predict == "softmax":
            neutral = embed_neutral(x.to(self.device), self.num_classes)
            records = forward_records(self.units, neutral, ff, None)
            feats = readout_features(records, self.model.readout_units, ff.norm)
            return torch.addmm(self.readout.bias, feats, self.readout.weight.t())
        gs = self.goodness_per_unit(x)
        return sum(gs[i] for i in scored_units(len(gs), self.predict_units))

    def use_for_selection(self, x: torch.Tensor, y: torch.Tensor, n_test: int | None = None) -> None:
        """--predict-units auto: fix the training sample its choice is made on: SELECTION_SAMPLES
        images, and no more than the n_test the evaluation scores, so choosing costs at most one
        more evaluation. Drawn by a generator of its own, so training is not touched; indices
        into x, so nothing is copied. x: the float32 (N, D) training inputs, or the data set's
        uint8 images, then converted a batch of sampled rows at a time."""
        n = SELECTION_SAMPLES if n_test is None else min(SELECTION_SAMPLES, n_test)
        g = torch.Generator().manual_seed(self.cfg.seed + SELECTION_SEED)
        self.selection = (x, y, torch.randperm(x.shape[0], generator=g)[:n])

    @torch.no_grad()
    def choose_predict_units(self) -> str:
        """--predict-units auto: set self.predict_units to whichever of all / skip-first labels
        the selection sample better; skip-first must win by SELECTION_MARGIN (the paper's all
        on a tie). Returns the choice; without a sample or with one unit, nothing changes."""
        ff = self.cfg.ff
        if (ff.predict_units != "auto" or ff.predict != "goodness" or self.selection is None
                or len(self.units) < 2):
            return self.predict_units
        x, y, idx = self.selection
        hits = torch.zeros(2, dtype=torch.long)
        for i in range(0, idx.numel(), self.cfg.eval_batch_size):
            rows = idx[i : i + self.cfg.eval_batch_size]
            gs = self.goodness_per_unit(float_rows(x, rows))
            for k, units in enumerate(("all", "skip-first")):
                scores = sum(gs[u] for u in scored_units(len(gs), units))
                hits[k] += int((scores.argmax(1).cpu() == y[rows]).sum())
        skip = hits[1] - hits[0] > SELECTION_MARGIN * idx.numel()
        self.predict_units = "skip-first" if skip else "all"
        return self.predict_units

    def refresh_norm_statistics(self, x: torch.Tensor, y: torch.Tensor) -> int:
        """Re-estimate the batch norms' running statistics (ff_units.estimate_norm_statistics)
        over cfg.norm_batches training batches made as a training step makes them: batch_size
        images, each with its label (positives) and with a wrong one (negatives). The batches
        come from a generator seeded by the run's seed and the epoch, so training's own draws are
        untouched and a resumed run scores as one that never stopped. x: float32 (N, D) or the
        uint8 images. Returns the batches used; 0 (nothing changed) for dense models, models
        without batch norm, or --norm-batches 0."""
        if self.dense or self.cfg.norm_batches == 0:
            return 0
        g = torch.Generator().manual_seed(self.cfg.seed + NORM_SEED + self.epoch)
        bs = min(self.cfg.batch_size, x.shape[0])
        idx = torch.randperm(x.shape[0], generator=g)[: bs * self.cfg.norm_batches]

        def batches():
            for i in range(0, idx.numel() - bs + 1, bs):  # whole batches only
                rows = idx[i : i + bs]
                yb = y[rows]
                neg = sample_negative_labels(yb, self.num_classes, g)
                yield self._batch(float_rows(x, rows), yb, neg)[0]

        return ff_units.estimate_norm_statistics(self.units, batches(), self.cfg.ff)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Test accuracy. First, where norm_source holds training data (fit sets it), the batch
        norms' statistics are re-estimated on it; then with --predict-units auto the units are
        chosen. Both belong to the evaluation (a run's time and memory figures leave it out)."""
        if self.norm_source is not None:
            self.refresh_norm_statistics(*self.norm_source)
        self.choose_predict_units()
        return accuracy(self.predict_scores, x, y, self.cfg.eval_batch_size)

    def fit(self, x_train, y_train, x_test, y_test, progress: bool = False,
            on_epoch=None) -> list[EpochLog]:
        """Train for cfg.epochs epochs (each unit in turn for the greedy schedule)."""
        plan = [None] * self.cfg.epochs
        if self.selection is None:
            self.use_for_selection(x_train, y_train, None if x_test is None else x_test.shape[0])
        self.norm_source = (x_train, y_train)
        if self.cfg.ff.schedule == "greedy":
            plan = [u for u in range(len(self.units)) for _ in range(self.cfg.epochs)]
        while self.epoch < len(plan):
            unit = plan[self.epoch]
            lam = self.cfg.ff.lam(self.epoch)
            loss, seconds = self.train_epoch(x_train, y_train, unit, progress)
            acc = self.evaluate(x_test, y_test) if (
                x_test is not None and self.cfg.evaluates_after(self.epoch + 1, len(plan))) else None
            log = EpochLog(self.epoch + 1, loss, acc, seconds, lam, unit)
            self.history.append(log)
            self.epoch += 1
            if on_epoch is not None:
                on_epoch(log)
        return self.history
