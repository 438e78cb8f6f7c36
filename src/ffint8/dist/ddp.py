"""Data-parallel FF training: every rank trains the whole model on its rows of each batch.

Every rank draws the same global batch of world_size x batch_size samples (the same permutation
and negative labels: one generator, seeded alike on every rank) and keeps its contiguous rows of
it. After ff_gradients, the gradients and losses are summed over the ranks, each rank's weighted
by its share of the rows, so every rank applies the update that one process computes on the
whole global batch: exactly on the float path, up to the order of float additions. The weights
start from rank 0's and stay identical, because every rank applies the same update.

With grad_int8 each rank rounds its weighted gradient to int8 (stochastic rounding) on a scale
shared by all ranks (all_reduce MAX of each tensor's absmax first); the int8 values are summed in
int32 and scaled back. |sum| <= 127 x world_size, so int32 holds any world below 16.9 million
ranks (int8 itself would overflow at two).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ffint8.errors import ConfigError
from ffint8.quant import QMAX, QTensor, quantize
from ffint8.quant.fastsr import mix64
from ffint8.train.ff import SeedStream

INT32_MAX = 2**31 - 1


def torchrun_env() -> tuple[int, int]:
    """(rank, world_size) from the variables torchrun sets; a ConfigError when they are missing."""
    needed = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    missing = [k for k in needed if k not in os.environ]
    if missing:
        raise ConfigError(f"--distributed needs the process group torchrun sets up ({', '.join(missing)} "
                          "not set); launch it as: torchrun --nproc-per-node 2 -m ffint8 train "
                          "--distributed ...")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def init_process_group(device: str = "cpu") -> tuple[int, int, str]:
    """Join torchrun's process group (gloo for CPU tensors, nccl for CUDA ones) unless this
    process is in one already. Returns (rank, world_size, backend)."""
    torchrun_env()
    if not dist.is_available():
        raise ConfigError("--distributed: this torch build has no torch.distributed")
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), dist.get_backend()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """A rank's stochastic-rounding seed: rank 0 keeps the run's own (so a world of one is a
    plain run); the others get unrelated streams, so the ranks' rounding noise is independent."""
    return seed if rank == 0 else mix64(seed ^ mix64(rank))


def shard_rows(m: int, rank: int, world_size: int) -> slice:
    """A rank's rows of a global batch of m rows: contiguous, sizes differing by at most one."""
    return slice(rank * m // world_size, (rank + 1) * m // world_size)


def quantize_shared(x: torch.Tensor, amax: torch.Tensor, seed: int) -> QTensor:
    """x to int8 by stochastic rounding on the scale amax / 127, where amax (0-d, >= max|x|) is
    the absmax over all ranks, rather than x's own. Same scale on every rank for the same amax."""
    # quantize() takes its scale from its input's absmax: appending amax makes that the shared
    # one (and keeps the fused stochastic-rounding kernel); the extra element is dropped.
    flat = torch.cat([x.reshape(-1).float(), amax.reshape(1).float()])
    qt = quantize(flat, "stochastic", seed=seed)
    return QTensor(qt.q[:-1].view(x.shape), qt.scale)


@dataclass
class DataParallel:
    """One rank's part in data-parallel training; FFTrainer calls rows() and reduce()."""

    rank: int
    world_size: int
    grad_int8: bool = False
    backend: str = "gloo"
    seeds: SeedStream | None = None  # the trainer's stream, once setup() has run

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} outside a world of {self.world_size}")
        if QMAX * self.world_size > INT32_MAX:  # the int8 gradients' sum must fit int32
            raise ConfigError(f"--grad-int8: {self.world_size} ranks could overflow the int32 sum")

    def rows(self, m: int) -> slice:
        return shard_rows(m, self.rank, self.world_size)

    def check_data(self, n: int, batch_size: int) -> None:
        """Every rank needs at least one row of every global batch, the last one included."""
        rem = n % (batch_size * self.world_size)
        if n < self.world_size or 0 < rem < self.world_size:
            raise ConfigError(
                f"--distributed: {n} training samples leave a last global batch of {rem} for "
                f"{self.world_size} ranks (at least one each needed); use --limit-train {n - rem}")

    def setup(self, trainer) -> None:
        """Start from rank 0's weights; give this rank its own stochastic-rounding stream (its
        position, the counter, is the run's: the same on every rank, saved in checkpoints)."""
        with torch.no_grad():
            for t in [*trainer.model.parameters(), *trainer.model.buffers()]:
                dist.broadcast(t.data, src=0)
        trainer.seeds = SeedStream(rank_seed(trainer.cfg.seed, self.rank), trainer.seeds.counter)
        self.seeds = trainer.seeds

    def batch_mean(self, rows: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The mean over all ranks' rows (rows in all) of a (b, N) tensor each rank holds: what
        peer normalisation takes over the global batch. One all_reduce of N floats per call."""
        def mean(y: torch.Tensor) -> torch.Tensor:
            total = y.sum(dim=0)
            dist.all_reduce(total)
            return total / rows

        return mean

    def reduce(self, model: torch.nn.Module, losses: torch.Tensor, m: int) -> torch.Tensor:
        """Replace every gradient of `model` by the global batch's: the ranks' gradients summed,
        each weighted by its share of the m rows. Returns the global losses (L,) the same way."""
        rows = self.rows(m)
        share = (rows.stop - rows.start) / m
        params = [p for p in model.parameters() if p.grad is not None]
        if self.grad_int8:
            self._reduce_int8(params, share)
            losses = losses * share
            dist.all_reduce(losses)
            return losses
        # float: gradients and losses in one buffer, one collective per step
        flat = torch.cat([p.grad.reshape(-1) for p in params] + [losses.reshape(-1)]).mul_(share)
        dist.all_reduce(flat)
        start = 0
        for p in params:
            p.grad.copy_(flat[start : start + p.numel()].view_as(p.grad))
            start += p.numel()
        return flat[start:].clone()

    def _reduce_int8(self, params: list[torch.nn.Parameter], share: float) -> None:
        grads = [p.grad * share for p in params]
        amax = torch.stack([g.abs().amax() for g in grads])  # (P,) one per tensor
        dist.all_reduce(amax, op=dist.ReduceOp.MAX)
        qs = [quantize_shared(g, a, self.seeds.next()) for g, a in zip(grads, amax)]
        total = torch.cat([q.q.reshape(-1) for q in qs]).to(torch.int32)  # |sum| <= 127 W
        dist.all_reduce(total)
        start = 0
        for p, q in zip(params, qs):
            n = p.numel()
            p.grad.copy_(total[start : start + n].view_as(p.grad).float() * q.scale)
            start += n

    def describe(self, batch_size: int) -> dict:
        """For metrics.json and the log: who averaged what, and the effective batch."""
        grads = ("int8, stochastic rounding on a shared per-tensor scale, summed in int32"
                 if self.grad_int8 else "float32")
        return {"mode": "data", "world_size": self.world_size, "backend": self.backend,
                "batch_per_rank": batch_size, "effective_batch": batch_size * self.world_size,
                "gradient_exchange": grads}
