"""Adam with 8-bit state: `--optimizer adam8`.

torch.optim.Adam keeps two float32 moments per parameter (8 bytes); here they are stored
block-wise in 8 bits (ffint8.quant.blockwise: e4m3 codes, one float32 scale per 256 values),
about 2.03 bytes per parameter. The first moment m is stored as is; the second as r = sqrt(v),
which halves the range the codes must cover. Both are re-stored with stochastic rounding after
every step, so their decay (beta2 = 0.999 moves v by less than e4m3's spacing) holds on average.

The update is torch.optim.Adam's (L2 weight decay added to the gradient, bias corrections),
computed in float32 on `chunk` values at a time, so the float32 copies of the state never
exceed a chunk. An element whose r rounds to 0 (below 2^-9 of its block's largest, e4m3's
range) takes no step rather than m / eps.

Two paths: a fused C kernel (csrc/fastquant.c, built on first use like the quantiser; one pass
per block, stochastic rounding from a counter-based hash) and this file's PyTorch code, the
reference and the fallback where no C compiler is found. Both round alike (tested: the same codes
with rounding to nearest, and the same with stochastic rounding where the reference is given the
kernel's hashed noise). A step costs more than fused torch.optim.Adam's
(benchmarks/optim_step.py, MLP 784-1000-1000, one thread, session 15: the C kernel 2.2x, the
PyTorch path 23x): Adam's arithmetic, and for each moment an e4m3 decode, its share of a hash
(one per two values) and an encode, in operations that vectorise (the kernel was 5x while it
looked values up in a table, a gather, and branched in its encoder; 2.7x with a hash per
value). It trades time for memory.

Why not a library: torchao's 8-bit optimisers need torch.compile (a C++ toolchain at run time,
and the compiler's memory), which edge boards lack; bitsandbytes' are CUDA-first.
"""

from __future__ import annotations

import math

import torch

from ffint8.quant import QTensor, fastsr
from ffint8.quant.blockwise import (
    FP8,
    dequantize_blocks,
    quantize_blocks,
    stochastic_noise,
)
from ffint8.quant.gemm import Kernel
from ffint8.train.factored import FactoredStep

# step_factored's row blocks: an int32 accumulator of at most this many bytes. Smaller than
# FactoredAdam's: adam8 is the choice for memory, and its update costs more than a block switch.
# 256 KB, not 1 MB: 0.7 MB less training memory for the 784-1000-1000 MLP (a median over three
# seeds, 24.4 -> 23.7 MB), 10% more time an epoch (26 -> 28.5 s), session 13.
ADAM8_BLOCK_BYTES = 1 << 18


def row_multiple(cols: int, block: int = 256) -> int:
    """step_factored's row blocks start on a block of the state: rows a multiple of this."""
    return block // math.gcd(cols, block) if cols else 1


class Adam8(FactoredStep, torch.optim.Optimizer):
    """Adam with 8-bit moments. step_factored (as FactoredAdam's, train/factored.py) steps an
    FF-INT8 dense weight from the int8 factors of its gradient: an int32 accumulator a block of
    rows at a time into the C kernel, so no float32 gradient is formed; the same update."""

    block_bytes = ADAM8_BLOCK_BYTES

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, block: int = 256,
                 chunk: int = 1 << 16, seed: int = 0, stochastic: bool = True,
                 fused: bool = True, kernel: Kernel = "auto") -> None:
        if not lr > 0:
            raise ValueError(f"Adam8: lr must be > 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"Adam8: betas must lie in [0, 1), got {betas}")
        if chunk % block:
            raise ValueError(f"Adam8: chunk ({chunk}) must be a multiple of block ({block})")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.block, self.chunk = block, chunk
        self.stochastic = stochastic  # False: the state rounds to nearest (tests compare paths)
        self.fused = fused  # the C kernel where it is built (ffint8.quant.fastsr); else PyTorch
        self.generator = torch.Generator().manual_seed(seed)  # stochastic rounding of the state
        self._seed = seed
        self._noise: torch.Tensor | None = None  # the PyTorch path's noise table, made on use
        self.kernel = kernel  # step_factored's int8 GEMM
        self._acc = None

    def _init_state(self, p: torch.Tensor) -> dict:
        n = -(-p.numel() // self.block) * self.block  # padded to whole blocks
        dev = p.device
        zeros = lambda k: torch.zeros(k, dtype=torch.uint8, device=dev)  # noqa: E731  (e4m3 0: 0x00)
        # codes are kept as uint8: load_state_dict casts floating-point state to the
        # parameter's dtype, which would undo the 8-bit storage. "step" stays on the CPU, as
        # torch's optimisers keep it.
        ones = lambda k: torch.ones(k, device=dev)  # noqa: E731
        return {"step": torch.zeros(()), "m": zeros(n), "m_scale": ones(n // self.block),
                "r": zeros(n), "r_scale": ones(n // self.block)}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.is_contiguous():
                    raise ValueError("Adam8 steps contiguous parameters only")
                self._step_one(p, group)
        return loss

    def _step_one(self, p: torch.Tensor, group: dict) -> None:
        """p's step: its state made on the first, the count moved on, the update applied."""
        state = self.state[p]
        if not state:
            state.update(self._init_state(p))
        state["step"] += 1
        self._update(p, state, group, int(state["step"]))

    @torch.no_grad()
    def step_direct(self, params: list[torch.Tensor]) -> bool:
        """step() for just `params` (a unit's bias, the parameters with a .grad, in the
        optimiser's order), each through _update as step() does, without torch.optim's per-step
        machinery (its profiler records and hooks cost more than a bias's update: 0.2-0.3 ms a
        step for the MLP's two, session 15). The same update and the same rounding keys as
        step(). Returns False, having stepped nothing, where step() must run: no fused C kernel,
        step hooks registered, or a parameter that is not contiguous or has no .grad."""
        if (not (self.fused and fastsr.available()) or self._has_step_hooks()
                or not all(p.grad is not None and p.is_contiguous() for p in params)):
            return False
        for p in params:
            self._step_one(p, self._group_of(p))
        return True

    def _constants(self, group: dict, t: int) -> tuple:
        """(b1, b2, step_size, root_c2, eps, wd, keys) of step t; draws the rounding keys."""
        b1, b2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        step_size, root_c2 = lr / (1 - b1**t), math.sqrt(1 - b2**t)
        keys = None
        if self.stochastic:  # drawn whichever path runs, so both advance the generator alike
            keys = tuple(torch.randint(0, 1 << 32, (4,), generator=self.generator).tolist())
        return b1, b2, step_size, root_c2, eps, wd, keys

    @torch.no_grad()
    def step_factored(self, p: torch.Tensor, g_q: QTensor, a_q: QTensor) -> float | None:
        """One step of the (N, D) weight p whose gradient is g_q^T a_q: g_q (K, N), a_q (K, D),
        int8 with 0-d scales. Returns max|p| after the step (NaN if a value is not finite), or
        None where it set p.grad instead, for step() to apply (the same update)."""
        group = self._group_of(p)
        if not (self.fused and self.block <= fastsr.MAX_ADAM8_BLOCK
                and self._factors_fit(p, g_q, a_q)):
            return self._form_gradient(p, g_q, a_q)
        cols = p.shape[1]
        state = self.state[p]
        if not state:
            state.update(self._init_state(p))
        state["step"] += 1
        b1, b2, step_size, root_c2, eps, wd, keys = self._constants(group, int(state["step"]))
        g_scale = float(g_q.scale * a_q.scale)  # as the plain path scales: one float32 product
        fused = self._kernel_rows(p, g_q.q.shape[0], row_multiple(cols, self.block))
        if fused is not None:
            amax = fastsr.adam8_factored(p, g_q.q, a_q.q, g_scale, state, self.block, b1, b2,
                                         step_size, root_c2, eps, wd, keys, *fused)
            if amax is not None:
                torch.autograd.graph.increment_version(p)  # written through a pointer
                return amax
        step = fastsr.adam8_bind(p, state, self.block, b1, b2, step_size, root_c2, eps, wd, keys)
        if step is None:
            raise RuntimeError("step_factored: the fused adam8 kernel refused its operands")
        amax = 0.0
        for r0, _, acc in self._gradient_blocks(p, g_q, a_q, row_multiple(cols, self.block)):
            amax = step(r0 * cols, acc, g_scale, amax)
        torch.autograd.graph.increment_version(p)  # written through a pointer
        return amax

    def _update(self, p: torch.Tensor, state: dict, group: dict, t: int) -> None:
        b1, b2, step_size, root_c2, eps, wd, keys = self._constants(group, t)
        if self.fused and fastsr.adam8_step(p, p.grad, state, self.block, b1, b2,
                                            step_size, root_c2, eps, wd, keys):
            return
        flat, grad = p.view(-1), p.grad.reshape(-1)
        bs, n = self.block, p.numel()
        for s in range(0, n, self.chunk):
            e = min(s + self.chunk, n)
            k = e - s
            blocks = slice(s // bs, -(-e // bs))
            codes = slice(blocks.start * bs, blocks.stop * bs)  # k values, padded to whole blocks
            m = dequantize_blocks(state["m"][codes].view(FP8), state["m_scale"][blocks], bs)
            r = dequantize_blocks(state["r"][codes].view(FP8), state["r_scale"][blocks], bs)
            g = grad[s:e] if not wd else grad[s:e] + wd * flat[s:e]
            if len(m) > k:
                g = torch.nn.functional.pad(g, (0, len(m) - k))  # padding stays 0 in m and v
            m.lerp_(g, 1 - b1)  # m <- b1 m + (1 - b1) g
            r = r.square_().mul_(b2).addcmul_(g, g, value=1 - b2).sqrt_()  # sqrt(b2 v + (1-b2) g^2)
            update = m / (r / root_c2 + eps)
            flat[s:e].add_(update[:k].masked_fill_(r[:k] == 0, 0), alpha=-step_size)
            for key, x in (("m", m), ("r", r)):
                noise = None
                if self.stochastic:
                    at = int(torch.randint(0, self.chunk + 1, (), generator=self.generator))
                    noise = self._noise_table(x.device)[at : at + len(x)]
                q, scale = quantize_blocks(x, bs, noise)
                state[key][codes] = q.view(torch.uint8)
                state[f"{key}_scale"][blocks] = scale

    def _noise_table(self, device: torch.device) -> torch.Tensor:
        """Drawing fresh noise costs more than the rest of the PyTorch update (13 ns a value
        here). Each chunk reads a window at a random offset of one table of 2 * chunk draws
        instead: a value sees independent noise from step to step unless two offsets coincide.
        The table comes from its own generator (seeded from the seed), so a resumed run makes
        the same one; the C kernel hashes instead and never makes it (512 KB at the default chunk).
        Drawn on the CPU and copied to the parameters' device, so every device rounds alike."""
        if self._noise is None or self._noise.device != device:
            g = torch.Generator().manual_seed(self._seed ^ 0x5EED)
            self._noise = stochastic_noise(2 * self.chunk, g).to(device)
        return self._noise

    def state_dict(self) -> dict:
        d = super().state_dict()
        d["generator"] = self.generator.get_state()  # exact resume of the stochastic rounding
        return d

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        gen = state_dict.pop("generator", None)
        # torch casts every state tensor to its parameter's dtype (float32): the uint8 codes
        # are taken out around that and put back as they are
        codes = {i: {k: s[k] for k in ("m", "r") if k in s} for i, s in state_dict["state"].items()}
        state_dict["state"] = {i: {k: v for k, v in s.items() if k not in ("m", "r")}
                               for i, s in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(saved_ids, params):
            if i in codes:  # on the parameter's device, as torch puts the rest of the state
                self.state[p].update({k: v.to(p.device) for k, v in codes[i].items()})
        if gen is not None:
            self.generator.set_state(gen)
