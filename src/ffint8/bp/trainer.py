"""BPTrainer: backprop with a softmax cross-entropy head, in float32 or int8 (bp-* algorithms).

The same public interface as ffint8.train.loop.FFTrainer (fields, state_dict, train_epoch,
predict_scores, evaluate, fit), so the run, the checkpoints and the CLI treat both alike. It trains
the MLP and the CNNs: every layer of model.linear_layers() (dense or conv) is quantised, the rest
(the CNNs' normalisation layers) stays float32.
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F
from tqdm import tqdm

from ffint8 import heap
from ffint8.bp.clip import lr_scale
from ffint8.bp.config import BP_ALGOS, BPConfig
from ffint8.bp.grad import make_grad_quantizer
from ffint8.bp.linear import Int8Layer, int8_linear_inference
from ffint8.devices import synchronize
from ffint8.errors import CheckpointError, ConfigError, DivergenceError
from ffint8.nn.blocks import Arith
from ffint8.train.config import TrainConfig
from ffint8.train.ff import SeedStream
from ffint8.train.loop import EpochLog, accuracy, check_finite, make_optimizer


@dataclass
class BPTrainer:
    """Trains `model` by backprop (model(x, ops) -> logits, one op per layer of
    model.linear_layers(): dense (N, D) or conv (O, C/G, kh, kw) weights); holds all mutable run
    state. algo: one of BP_ALGOS, default cfg.ff.algo.

    Optimiser parameter groups: one per layer of linear_layers() (its weight and bias: bp-ui8
    scales each layer's learning rate on its own), then, where the model has any, one holding
    every other parameter (the CNNs' norms) at the unscaled learning rate.
    """

    model: torch.nn.Module
    cfg: TrainConfig
    num_classes: int
    epoch: int = 0
    history: list[EpochLog] = field(default_factory=list)
    algo: str | None = None
    bp: BPConfig = BPConfig()

    def __post_init__(self) -> None:
        if self.algo is None:
            self.algo = self.cfg.ff.algo
        if self.algo not in BP_ALGOS:
            raise ConfigError(f"invalid --algo {self.algo!r} for backprop; choose one of: "
                              f"{', '.join(BP_ALGOS)}")
        layers = self.model.linear_layers()
        self.device = next(self.model.parameters()).device  # --device; the data stay on the CPU
        self.param_groups = parameter_groups(self.model)
        self.optimizer = make_optimizer([{"params": g} for g in self.param_groups], self.cfg)
        self.generator = torch.Generator().manual_seed(self.cfg.seed)  # shuffling
        self.seeds = SeedStream(self.cfg.seed)  # stochastic rounding
        self.int8 = self.algo != "bp-fp32"
        kernel = self.cfg.ff.int8_kernel
        self.layers = [Int8Layer(make_grad_quantizer(self.algo, self.bp), self.seeds, kernel,
                                 self.bp.act_rounding) for _ in layers] if self.int8 else []
        self.inference_ops = [inference_op(w, kernel) for w, _ in layers] if self.int8 else None

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this trainer stands (between epochs)."""
        return {"epoch": self.epoch, "history": [e.to_dict() for e in self.history],
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "sr_counter": self.seeds.counter,
                "algo": self.algo, "grad_quant": [l.grad.state_dict() for l in self.layers]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("algo", self.algo) != self.algo:
            raise CheckpointError(f"the trainer state is of {state['algo']}, not {self.algo}")
        if len(state.get("grad_quant", [])) != len(self.layers):
            raise CheckpointError(f"the trainer state holds {len(state.get('grad_quant', []))} "
                                  f"layer quantisers, the model {len(self.layers)}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.seeds.counter = int(state["sr_counter"])
        for layer, s in zip(self.layers, state["grad_quant"]):
            layer.grad.load_state_dict(s)
        self.epoch = int(state["epoch"])
        self.history = [EpochLog.from_dict(d) for d in state["history"]]

    def _set_lr(self, lr: float) -> None:
        scale = self.algo == "bp-ui8" and self.bp.lr_scaling
        for i, group in enumerate(self.optimizer.param_groups):
            factor = 1.0  # bp-fp32, bp-int8, bp-gdai8, and the float parameters' group
            if scale and i < len(self.layers):
                factor = lr_scale(self.layers[i].grad.deviation, self.bp.lr_alpha, self.bp.lr_beta)
            group["lr"] = lr * factor

    def train_epoch(self, x_train: torch.Tensor, y_train: torch.Tensor,
                    unit: int | None = None, progress: bool = False) -> tuple[float, float]:
        """One pass over the data in shuffled batches. Returns (mean loss per step, seconds)."""
        if unit is not None:
            raise ConfigError("--schedule greedy trains FF units one at a time; backprop trains "
                              "all layers together (use --schedule simultaneous)")
        n = x_train.shape[0]
        bs = self.cfg.batch_size
        perm = torch.randperm(n, generator=self.generator)
        steps = range(0, n, bs)
        bar = tqdm(steps, desc=f"epoch {self.epoch + 1}", unit="step", leave=False,
                   disable=not (progress and sys.stderr.isatty()))
        ops = self.layers if self.int8 else None
        self.model.train()  # batch statistics in the norms
        total = torch.zeros((), device=self.device)
        phase = self.epoch % self.cfg.epochs
        start = time.perf_counter()
        for step, i in enumerate(bar):
            idx = perm[i : i + bs]
            self.optimizer.zero_grad(set_to_none=True)
            xb, yb = x_train[idx].to(self.device), y_train[idx].to(self.device)
            loss = F.cross_entropy(self.model(xb, ops), yb)
            if not bool(torch.isfinite(loss)):
                raise DivergenceError.at(self.epoch + 1, step + 1, f"the loss is {loss.item()}")
            loss.backward()
            # After backward: bp-ui8's factor uses this step's gradient deviation.
            self._set_lr(self.cfg.lr_at((phase + step / len(steps)) / self.cfg.epochs))
            self.optimizer.step()
            total += loss.detach()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
            heap.after_step(step)  # as the FF loop does (ffint8.heap)
        synchronize(self.device)  # a GPU's queued work belongs to the epoch's time
        seconds = time.perf_counter() - start
        bar.close()
        check_finite(self.param_groups, self.epoch, len(steps), "parameter group")
        return total.item() / len(steps), seconds

    @torch.no_grad()
    def predict_scores(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) images -> (B, C) logits: a float forward for bp-fp32, else int8 GEMMs and
        convolutions with round-to-nearest (no stochastic rounding at inference). The norms use
        their running statistics (eval mode), so a sample's logits do not depend on its batch."""
        self.model.eval()
        return self.model(x.to(self.device), self.inference_ops)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return accuracy(self.predict_scores, x, y, self.cfg.eval_batch_size)

    def fit(self, x_train, y_train, x_test, y_test, progress: bool = False,
            on_epoch=None) -> list[EpochLog]:
        """Train for cfg.epochs epochs (from self.epoch on, so a resumed trainer continues)."""
        while self.epoch < self.cfg.epochs:
            loss, seconds = self.train_epoch(x_train, y_train, None, progress)
            acc = self.evaluate(x_test, y_test) if (
                x_test is not None and self.cfg.evaluates_after(self.epoch + 1, self.cfg.epochs)) else None
            log = EpochLog(self.epoch + 1, loss, acc, seconds, 0.0)
            self.history.append(log)
            self.epoch += 1
            if on_epoch is not None:
                on_epoch(log)
        return self.history


def parameter_groups(model: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
    """The optimiser's groups: each layer's weight and bias (if any) in linear_layers() order,
    then every other parameter of the model in one group (absent when there is none)."""
    layers = [[p for p in wb if p is not None] for wb in model.linear_layers()]
    quantised = {id(p) for group in layers for p in group}
    rest = [p for p in model.parameters() if id(p) not in quantised]
    return layers + [rest] if rest else layers


def inference_op(weight: torch.Tensor, kernel: str):
    """The int8 inference op of a layer with this weight, rounding to nearest with one scale per
    sample: Arith's int8 convolution for a conv (4-D) weight, int8_linear_inference else."""
    if weight.dim() == 4:
        return Arith(int8=True, seed=None, kernel=kernel)
    return functools.partial(int8_linear_inference, kernel=kernel)
