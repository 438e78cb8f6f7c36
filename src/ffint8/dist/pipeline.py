"""Layer-pipelined FF: rank r owns unit r and passes detached activations on to rank r + 1.

FF units learn from local losses, so with look-ahead "none" nothing travels backwards: rank r
forwards batch s through its unit, sends the output on ((2B, N_r) float32, detached) and updates
from its own loss while rank r + 1 works on batch s - 1. Every forward uses weights updated
through the previous batch, exactly as in one process, so the ranks compute one process's updates.

"collab" adds the other units' goodness to a unit's own, as constants: rank r needs
sum_{j<r} G_j, which travels forward with the activations, and sum_{j>r} G_j, which comes back
from rank r + 1 once the later ranks have forwarded the batch. By default rank r waits for it
before it updates, so collab too computes exactly one process's updates; the pipeline then
overlaps each rank's update with the later ranks' forwards and the earlier ranks' next batch.
stale=True keeps the pipeline full instead: rank r forwards the next batches meanwhile and applies
its update for batch s when the sum arrives (the goodness values stay batch s's), so its weights
lag by R - 1 - r updates. Measured on Fashion-MNIST, even one update of lag slows the loss down
and can kill ReLU units at lr 0.003 (docs/distributed.md), hence the default. "chain" would need
dL_j/dy_r sent back every step, a backward pass through the later units; it is not pipelined.

Ranks talk through Links: QueueLink between threads of one process, DistLink between
torch.distributed processes (torchrun).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist

from ffint8.data import embed_label, sample_negative_labels
from ffint8.dist.ddp import rank_seed
from ffint8.errors import ConfigError, DivergenceError
from ffint8.nn import functional as FF
from ffint8.nn.dense import FFDense
from ffint8.train.config import TrainConfig
from ffint8.train.ff import SeedStream, forward_records, gradients_from_records
from ffint8.train.loop import make_optimizer

DEPTH = 4  # forward messages in flight per link: bounds the memory a fast rank can run ahead


class Link(Protocol):
    """One rank's connection to a neighbour: float32 tensors, delivered in order."""

    def send(self, x: torch.Tensor) -> None: ...

    def recv(self) -> torch.Tensor: ...


class PipelineAborted(RuntimeError):
    """Another stage failed; this one stops waiting for it."""


class QueueLink:
    """One end of a link between two threads of one process."""

    def __init__(self, outbox: queue.Queue, inbox: queue.Queue, abort: threading.Event) -> None:
        self.outbox, self.inbox, self.abort = outbox, inbox, abort

    @classmethod
    def pair(cls, abort: threading.Event) -> tuple[QueueLink, QueueLink]:
        """(upstream end, downstream end): forward messages bounded by DEPTH, backward ones not
        (they are small, and bounding both ways could deadlock)."""
        down, up = queue.Queue(maxsize=DEPTH), queue.Queue()
        return cls(down, up, abort), cls(up, down, abort)

    def send(self, x: torch.Tensor) -> None:
        while True:
            try:
                return self.outbox.put(x, timeout=0.05)
            except queue.Full:
                if self.abort.is_set():
                    raise PipelineAborted("another pipeline stage failed") from None

    def recv(self) -> torch.Tensor:
        while True:
            try:
                return self.inbox.get(timeout=0.05)
            except queue.Empty:
                if self.abort.is_set():
                    raise PipelineAborted("another pipeline stage failed") from None


class DistLink:
    """A torch.distributed point-to-point link to rank `peer`: a 3-int header (ndim, shape),
    then the data. Sends are asynchronous; at most `depth` (0: any number) stay in flight."""

    def __init__(self, peer: int, depth: int = 0) -> None:
        self.peer, self.depth = peer, depth
        self.in_flight: deque = deque()

    def send(self, x: torch.Tensor) -> None:
        x = x.detach().float().contiguous()
        header = torch.tensor([x.dim(), *x.shape] + [0] * (2 - x.dim()), dtype=torch.int64)
        # the tensors stay referenced until their sends complete
        self.in_flight.append((dist.isend(header, self.peer), dist.isend(x, self.peer), header, x))
        while self.in_flight and (
            (self.depth and len(self.in_flight) > self.depth) or self.in_flight[0][1].is_completed()
        ):
            head, body, *_ = self.in_flight.popleft()
            head.wait()
            body.wait()

    def recv(self) -> torch.Tensor:
        header = torch.empty(3, dtype=torch.int64)
        dist.recv(header, self.peer)
        ndim = int(header[0])
        x = torch.empty([int(v) for v in header[1 : 1 + ndim]], dtype=torch.float32)
        dist.recv(x, self.peer)
        return x

    def flush(self) -> None:
        while self.in_flight:
            head, body, *_ = self.in_flight.popleft()
            head.wait()
            body.wait()


def check_pipeline(cfg: TrainConfig, n_stages: int, n_units: int) -> None:
    """A ConfigError for what this pipeline does not do."""
    ff = cfg.ff
    if n_stages != n_units:
        raise ConfigError(f"--distributed pipeline: {n_stages} ranks for {n_units} units; run one "
                          f"rank per unit (torchrun --nproc-per-node {n_units})")
    if ff.look_ahead == "chain":
        raise ConfigError("--distributed pipeline supports --look-ahead none and collab, not "
                          "chain (the default), which needs gradients sent back through the later "
                          "units every step: pass --look-ahead collab")
    if ff.schedule != "simultaneous":
        raise ConfigError("--distributed pipeline trains all units at once (--schedule simultaneous)")
    if ff.predict != "goodness" or ff.negatives != "random":
        raise ConfigError("--distributed pipeline: only --predict goodness with --negatives random")


def targets(rows: int) -> torch.Tensor:
    """The targets of a batch of positives then as many negatives: (rows,) 1.0 then 0.0."""
    b = rows // 2
    return torch.cat([torch.ones(b), torch.zeros(b)])


def batches(x_train: torch.Tensor, y_train: torch.Tensor, num_classes: int, batch_size: int,
            generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's batches as FFTrainer makes them, with its random draws in its order:
    positives then negatives (2B, D), targets (2B,)."""
    perm = torch.randperm(x_train.shape[0], generator=generator)
    for i in range(0, x_train.shape[0], batch_size):
        idx = perm[i : i + batch_size]
        xb, yb = x_train[idx], y_train[idx]
        neg = sample_negative_labels(yb, num_classes, generator)
        x = torch.cat([embed_label(xb, yb, num_classes), embed_label(xb, neg, num_classes)])
        yield x, targets(x.shape[0])


@dataclass
class Stage:
    """Rank `index` of `n_stages`: its unit, optimiser, stochastic-rounding stream and links.
    stale: collab updates wait for nobody (see the module docstring)."""

    unit: FFDense
    index: int
    n_stages: int
    cfg: TrainConfig
    prev: Link | None = None
    next: Link | None = None
    stale: bool = False

    def __post_init__(self) -> None:
        self.optimizer = make_optimizer(self.unit.parameters(), self.cfg)
        self.seeds = SeedStream(rank_seed(self.cfg.seed, self.index))

    def run_epoch(self, epoch: int, n_steps: int,
                  data: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None) -> float:
        """Train the unit for one epoch of n_steps batches (from `data` on the first stage, from
        the previous stage otherwise); returns its mean loss per step."""
        ff = self.cfg.ff
        lam = ff.lam(epoch) if ff.look_ahead != "none" else 0.0
        collab = ff.look_ahead == "collab" and lam != 0.0
        delay = self.n_stages - 1 - self.index if collab and self.stale else 0  # updates held back
        pending: deque = deque()
        total = 0.0
        for step in range(n_steps):
            lr = self.cfg.lr_at((epoch % self.cfg.epochs + step / n_steps) / self.cfg.epochs)
            if self.prev is None:
                h, t = next(data)
                before = torch.zeros(h.shape[0])
            else:  # (2B, N_prev + 1): the previous unit's output, then sum_{j<r} G_j
                msg = self.prev.recv()
                h, before = msg[:, :-1], msg[:, -1]
                t = targets(h.shape[0])
            rec = forward_records([self.unit], h, ff, self.seeds)[0]
            good = FF.goodness(rec.y, ff.goodness)  # (2B,)
            if self.next is not None:
                self.next.send(torch.cat([rec.y, (before + good).unsqueeze(1)], dim=1))
            pending.append((rec, t, before, good, lr))
            if len(pending) > delay:
                total += self._update(*pending.popleft(), lam, collab, epoch, step)
        while pending:
            total += self._update(*pending.popleft(), lam, collab, epoch, n_steps)
        return total / n_steps

    def _update(self, rec, t, before, good, lr, lam, collab, epoch, step) -> float:
        others = None
        if collab:  # sum_{j>r} G_j of this batch, then ours added for the stage before
            after = self.next.recv() if self.next is not None else torch.zeros_like(good)
            if self.prev is not None:
                self.prev.send(good + after)
            others = before + after
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = gradients_from_records([self.unit], [rec], t, self.cfg.ff, lam, self.seeds, others)
        if not bool(torch.isfinite(loss).all()):
            raise DivergenceError.at(epoch + 1, step + 1,
                                     f"the loss of unit {self.index + 1} is {loss.sum().item()}")
        self.optimizer.step()
        return float(loss.sum())


class ThreadedPipeline:
    """All stages in one process, one thread each, QueueLinks between them (tests, one machine).

    torch ops release the GIL, so the stages overlap; give each a thread budget of its own
    (torch.set_num_threads before training) to keep them from oversubscribing the cores."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, num_classes: int,
                 stale: bool = False) -> None:
        units = list(model.units)
        check_pipeline(cfg, len(units), len(units))
        self.cfg, self.num_classes, self.epoch = cfg, num_classes, 0
        self.abort = threading.Event()
        self.stages = [Stage(u, i, len(units), cfg, stale=stale) for i, u in enumerate(units)]
        for a, b in zip(self.stages[:-1], self.stages[1:]):
            a.next, b.prev = QueueLink.pair(self.abort)
        self.generator = torch.Generator().manual_seed(cfg.seed)  # as FFTrainer's

    def train_epoch(self, x_train: torch.Tensor, y_train: torch.Tensor) -> tuple[float, float]:
        """One epoch through the pipeline: (loss summed over units, mean per step; seconds)."""
        n_steps = -(-x_train.shape[0] // self.cfg.batch_size)
        data = batches(x_train, y_train, self.num_classes, self.cfg.batch_size, self.generator)
        losses = [0.0] * len(self.stages)
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                losses[i] = self.stages[i].run_epoch(self.epoch, n_steps, data if i == 0 else None)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                errors.append(exc)
                self.abort.set()

        start = time.perf_counter()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(self.stages))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        seconds = time.perf_counter() - start
        if errors:
            raise next((e for e in errors if not isinstance(e, PipelineAborted)), errors[0])
        self.epoch += 1
        return sum(losses), seconds
