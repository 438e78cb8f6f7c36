"""One Forward-Forward update for general units (ffint8.nn.blocks: conv blocks, residual blocks)
by autograd, unit by unit.

The same objectives as ffint8.train.ff (see the top of that file), with G_l the mean (or sum) of
squares of unit l's output feature map per sample:
- none:   unit l minimises L_l.
- collab: unit l minimises the FF loss of G_l + lambda * sum_{j != l} stopgrad(G_j).
- chain:  unit l minimises L_l + lambda * sum_{l < j <= l + depth} L_j: gradients of later losses
          reach unit l through units l+1..j, each later loss weighted by lambda once.
One forward pass serves every unit. Each unit's input is detached, so no gradient crosses units
by itself: none and collab need one backward pass (each unit's loss reaches its own parameters
only); chain walks the units from the last to the first and hands each live signal dL_j/dy_l
down by a vector-Jacobian product through unit l (ffint8.train.ff's ladder, with autograd doing
what that file writes out for dense units). On the INT8 path every convolution is Int8Conv2d,
so the forward and both backward convolutions (input and weight gradient) are int8 x int8 ->
int32; norms, activations and the squeeze-excitation gates stay in float32.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ffint8.nn import functional as FF
from ffint8.nn.blocks import Arith
from ffint8.nn.conv import input_grads_only
from ffint8.train.config import FFConfig
from ffint8.train.ff import SeedStream


def unit_arith(cfg: FFConfig, seeds: SeedStream | None) -> Arith:
    """One unit's arithmetic for this forward: a fresh stochastic-rounding seed when training."""
    seed = seeds.next() if (cfg.int8 and seeds is not None) else None
    return Arith(cfg.int8, seed, cfg.weight_channel, cfg.int8_kernel)


def unit_goodness(y: torch.Tensor, kind: FF.Goodness) -> torch.Tensor:
    """(B, C, H, W) feature map (or (B, N) activities) -> (B,) goodness over all its values."""
    return FF.goodness(y, kind)  # reduces over C*H*W in y's own layout: no copy of the map


def forward_units(units: Sequence[nn.Module], x: torch.Tensor, cfg: FFConfig,
                  seeds: SeedStream | None, connect: bool = False
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The shared forward pass: ([input of each unit], [output of each unit]).

    Each input is the previous output detached; connect=True makes inputs after the first
    leaves that require grad, so a chain look-ahead can take gradients with respect to them."""
    ins, ys = [], []
    h = x
    for l, unit in enumerate(units):
        a = h.detach()
        if connect and l > 0:
            a.requires_grad_(True)
        y = unit(a, cfg.norm, unit_arith(cfg, seeds))
        ins.append(a)
        ys.append(y)
        h = y
    return ins, ys


def norm_layers(units: Sequence[nn.Module]) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch norms in `units` that keep running statistics."""
    return [m for u in units for m in u.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def estimate_norm_statistics(units: Sequence[nn.Module], batches: Iterable[torch.Tensor],
                             cfg: FFConfig) -> int:
    """Set every batch norm's running mean and variance to the plain average of its batch
    statistics over `batches` ((B, D) each, forwarded in training mode with INT8 rounding to
    nearest, as inference rounds), the weights held fixed; returns how many batches were used.

    Training moves the running statistics by an exponential average of the last few dozen
    batches, taken while every unit's weights move under them: in FF each unit updates at every
    step, so that average can lag the weights it is used with (MobileNet-v2 w0.5, session 18:
    61% test accuracy with the moving averages, 74.5% with statistics re-estimated over 50
    training batches, the same weights). This is "precise BN" (Wu and Johnson, 2021). With no
    batch the statistics are left as they were."""
    norms = norm_layers(units)
    if not norms:  # before any batch is made
        return 0
    it = iter(batches)
    first = next(it, None)
    if first is None:
        return 0
    momenta = [m.momentum for m in norms]
    modes = [u.training for u in units]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: the cumulative (plain) average over the batches
    n = 0
    try:
        for u in units:
            u.train()
        for x in itertools.chain([first], it):
            forward_units(units, x, cfg, seeds=None)
            n += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for u, mode in zip(units, modes):
            u.train(mode)
    return n


def ff_gradients(units: Sequence[nn.Module], x: torch.Tensor, t: torch.Tensor, cfg: FFConfig,
                 lam: float, seeds: SeedStream,
                 on_unit: Callable[[int], None] | None = None) -> torch.Tensor:
    """Forward x (B, D) with targets t (B,) once, set .grad of every unit's parameters, and
    return each unit's loss as its objective defines it: (L,), detached.

    on_unit(l), as in ffint8.train.ff.gradients_from_records, is called from the last unit down
    as soon as unit l's .grad is final and no later backward needs its parameters (chain: after
    the signals through unit l are out), so a per-unit update may step and free them there.
    Without it, none and collab take all units' gradients in one backward pass."""
    n_units = len(units)
    chain = cfg.look_ahead == "chain" and lam != 0.0
    ins, ys = forward_units(units, x, cfg, seeds, connect=chain)
    goods = [unit_goodness(y, cfg.goodness) for y in ys]  # L x (B,)
    g_eff = goods
    if cfg.look_ahead == "collab" and lam != 0.0:
        total = torch.stack(goods).detach().sum(0)
        g_eff = [g + lam * (total - g.detach()) for g in goods]  # others' goodness as constants
    losses = [FF.unit_loss(g, t, cfg.loss, cfg.theta, cfg.symba_alpha) for g in g_eff]
    if cfg.peer_weight:
        losses = [loss + FF.peer_loss(y.reshape(y.shape[0], -1), cfg.peer_weight)
                  for loss, y in zip(losses, ys)]
    params = [list(u.parameters()) for u in units]
    if not chain:  # inputs detached: each loss reaches its own unit's parameters only
        if on_unit is None:
            flat = [p for ps in params for p in ps]
            _set_grads(flat, torch.autograd.grad(torch.stack(losses).sum(), flat,
                                                 allow_unused=True))
        else:  # one backward per unit, each over its own graph
            for l in range(n_units - 1, -1, -1):
                _set_grads(params[l], torch.autograd.grad(losses[l], params[l], allow_unused=True))
                on_unit(l)
        return torch.stack(losses).detach()

    depth = n_units if cfg.chain_depth is None else cfg.chain_depth
    # signals[j] = dL_j / dy_l for the later units j whose loss still reaches unit l; losses with
    # j <= depth reach every unit below them and travel summed under key 0 (as in train/ff.py).
    signals: dict[int, torch.Tensor] = {}
    for l in range(n_units - 1, -1, -1):
        y = ys[l]
        own = torch.autograd.grad(losses[l], y, retain_graph=True)[0]  # dL_l / dy_l
        g_y = own + lam * torch.stack(list(signals.values())).sum(0) if signals else own
        live: dict[int, torch.Tensor] = {}
        if l > 0:
            for j, s in [*signals.items(), (l, own)]:
                if j > l - 1 + depth:
                    continue
                key = 0 if j <= depth else j
                live[key] = live[key] + s if key in live else s
        _set_grads(params[l], torch.autograd.grad(y, params[l], g_y, retain_graph=bool(live),
                                                  allow_unused=True))
        keys = list(live)
        signals = {}
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            with input_grads_only():  # the int8 convs' g_W would be thrown away here
                signals[key] = torch.autograd.grad(y, ins[l], live[key], retain_graph=not last)[0]
        # Only now: these backward passes read the unit's parameters (stepping earlier changes
        # the signals, and autograd raises no error: tested).
        if on_unit is not None:
            on_unit(l)
    return torch.stack(losses).detach()


def _set_grads(params: list[nn.Parameter], grads: Sequence[torch.Tensor | None]) -> None:
    """Overwrite .grad (a parameter no loss reaches, e.g. a frozen one, gets zeros)."""
    for p, g in zip(params, grads):
        p.grad = torch.zeros_like(p) if g is None else g


@contextmanager
def eval_mode(units: Sequence[nn.Module]) -> Iterator[None]:
    """Units in eval mode (BatchNorm uses its running statistics), restored afterwards."""
    flags = [u.training for u in units]
    for u in units:
        u.eval()
    try:
        yield
    finally:
        for u, flag in zip(units, flags):
            u.train(flag)


@torch.no_grad()
def goodness_per_unit(units: Sequence[nn.Module], x: torch.Tensor, cfg: FFConfig) -> list[torch.Tensor]:
    """Every unit's goodness, (B, D) -> [(B,)] * units: inference (running norm statistics;
    INT8 rounds to nearest with one scale per sample, so a score does not depend on its batch)."""
    with eval_mode(units):
        _, ys = forward_units(units, x, cfg, seeds=None)
    return [unit_goodness(y, cfg.goodness) for y in ys]


def total_goodness(units: Sequence[nn.Module], x: torch.Tensor, cfg: FFConfig,
                   scored: Sequence[int] | None = None) -> torch.Tensor:
    """Goodness summed over the units `scored` (default all), (B, D) -> (B,); see
    goodness_per_unit."""
    gs = goodness_per_unit(units, x, cfg)
    return sum(gs[i] for i in (range(len(gs)) if scored is None else scored))
