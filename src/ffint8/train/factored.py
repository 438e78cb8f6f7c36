"""Adam that steps an FF-INT8 dense weight from the int8 factors of its gradient.

On the INT8 path a dense unit's weight gradient is g_W = (s_g G)^T (s_a A): G the stochastically
rounded dL/dz (2B, N) and A the unit's quantised input (2B, D), both int8 with one scale each.
Formed as a tensor, that is an (N, D) int32 accumulator, a float32 copy of it, a scaling pass,
then Adam reading the float32 gradient: four passes over N * D values that do not fit in the
cache, where the GEMM itself is small (K = 2B). At FF's batch sizes those passes, not the
arithmetic, set the step time (issue 5, docs/results.md).

FactoredAdam is torch.optim.Adam (fused, so its state and checkpoints are Adam's own) with one
more method, step_factored: it forms the accumulator a block of rows at a time (an exact int8
GEMM of G's columns against A; BLOCK_BYTES bounds a block) and applies Adam to those rows
from the int32 values (csrc/fastquant.c, ffq_adam_i32), so no float32 gradient is ever
written. It returns max|W| after the step, which lets the unit quantise its next forward's weight
in one pass (FFDense.cache_int8_weight). The update is torch.optim.Adam(fused=True)'s, operation
for operation: on x86 weights and moments come out bit-equal, but for the last numel % 16 values
of a tensor (PyTorch's scalar tail), which may differ in the last place (see ffq_adam_i32).

Where the CPU has AVX-512 VNNI, the C kernel forms the rows itself (fastsr.adam_int32_factored,
and adam8_factored for Adam8): 16-32 rows at a time by byte dot products in a 260 KB scratch,
with no accumulator tensor and no int8 GEMM call. Where the C kernel is not built, or a tensor
does not fit, step_factored forms the gradient in .grad as the plain path does, for step() to
apply: the same update either way.
"""

from __future__ import annotations

import math

import torch
from torch.optim import optimizer as opt_module

from ffint8.quant import QTensor, fastsr, int8_mm, int8_mm_scaled
from ffint8.quant.gemm import MAX_EXACT_K, Kernel

# Rows of the weight per block: the block's int32 accumulator is at most this many bytes. Small
# blocks would stay in the cache between the GEMM and the update, but on a CPU with AMX every
# switch between the tile unit and the vector code costs more than the cache saves: on the Xeon
# of session 11, 1000 x 1000 in blocks of 128 rows took 2.2 ms, in one block 1.4 ms. So a block
# is as large as this bound allows, which only caps the accumulator's memory.
BLOCK_BYTES = 1 << 22
# the optimisers that step FF-INT8 dense weights from factors: FactoredAdam (adam, adamw), Adam8
FACTORED_OPTIMIZERS = ("adam", "adamw", "adam8")


# Where the C kernel forms a weight gradient's int32 rows itself (AVX-512 VNNI; fastsr's
# adam_int32_factored and adam8_factored), it does so at least this many rows at a time: a
# buffer that stays in the L2 cache, in place of the accumulator tensor and its int8 GEMM calls.
VNNI_ROWS = 16


def block_rows(cols: int, block_bytes: int = BLOCK_BYTES, multiple: int = 1) -> int:
    """Rows of an (N, cols) weight stepped per block: as many as block_bytes of int32
    accumulator hold, a multiple of `multiple` (at least one multiple)."""
    return max(multiple, block_bytes // (4 * max(cols, 1)) // multiple * multiple)


class FactoredStep:
    """What an optimiser needs to step weights from int8 gradient factors: the accumulator's
    memory, kept from step to step, and the row blocks of one weight's gradient."""

    kernel: Kernel = "auto"
    block_bytes: int = BLOCK_BYTES
    _acc: torch.Tensor | None = None
    # step_factored through the C kernel's own row loop where it has one (False: the row
    # blocks' gradient from int8_mm, as on CPUs without VNNI; tests compare the two)
    vnni: bool = True
    _scratch: torch.Tensor | None = None

    def _kernel_rows(self, p: torch.Tensor, k: int, multiple: int
                     ) -> tuple[int, torch.Tensor] | None:
        """(rows, scratch) for a C kernel that forms p's gradient rows itself from k factor
        rows, rows a multiple of `multiple`; None where none can (self.vnni off, no VNNI) or
        the run asked for another int8 kernel by name (--int8-kernel other than auto or vnni:
        every int8 GEMM then runs on it, this product too; vnni names these same rows)."""
        if not self.vnni or self.kernel not in ("auto", "vnni"):
            return None
        rows = multiple * max(1, VNNI_ROWS // multiple)
        need = fastsr.factored_scratch(p, k, rows)
        if not need:
            return None
        if self._scratch is None or self._scratch.numel() < need:
            self._scratch = torch.empty(need, dtype=torch.uint8)
        return rows, self._scratch

    def _has_step_hooks(self) -> bool:
        """Whether step hooks are registered (on this optimiser or on all): step() runs them,
        so step_direct leaves those steps to it."""
        return any(bool(getattr(owner, name, None)) for owner, name in (
            (self, "_optimizer_step_pre_hooks"), (self, "_optimizer_step_post_hooks"),
            (opt_module, "_global_optimizer_pre_hooks"),
            (opt_module, "_global_optimizer_post_hooks")))

    def _accumulator(self, rows: int, cols: int) -> torch.Tensor:
        """An int32 (rows, cols) tensor in memory reused by every call. Written afresh each
        step, a multi-megabyte accumulator costs more than its GEMM: on the Xeon of session 11
        the 1000 x 64 x 1000 product took 0.9-1.8 ms into new memory, 0.35-0.75 ms into reused
        memory that is still in the cache."""
        n = rows * cols
        if self._acc is None or self._acc.numel() < n:
            self._acc = torch.empty(n, dtype=torch.int32)
        return self._acc[:n].view(rows, cols)

    def _group_of(self, p: torch.Tensor) -> dict:
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise ValueError("step_factored: the parameter is not in this optimiser")

    @staticmethod
    def _factors_fit(p: torch.Tensor, g_q: QTensor, a_q: QTensor) -> bool:
        return (fastsr.available() and p.device.type == "cpu" and p.dtype == torch.float32
                and p.dim() == 2 and p.is_contiguous() and g_q.scale.dim() == 0
                and a_q.scale.dim() == 0 and g_q.q.shape[0] <= MAX_EXACT_K)

    def _form_gradient(self, p: torch.Tensor, g_q: QTensor, a_q: QTensor) -> None:
        """The fallback: p.grad formed as the plain path forms it, for step() to apply."""
        p.grad = int8_mm_scaled(g_q.q.t(), g_q.scale, a_q.q, a_q.scale, self.kernel)

    def block_rows(self, cols: int, multiple: int = 1) -> int:
        return block_rows(cols, self.block_bytes, multiple)

    def _gradient_blocks(self, p: torch.Tensor, g_q: QTensor, a_q: QTensor, multiple: int = 1):
        """(r0, r1, acc) for consecutive row blocks of p: acc the exact int32 gradient of rows
        r0:r1 (before its scales), in the reused accumulator; every block but the last a
        multiple of `multiple` rows."""
        g_cols, a = g_q.q.t(), a_q.q  # (N, K) view, (K, D)
        cols = p.shape[1]
        rows = self.block_rows(cols, multiple)
        for r0 in range(0, p.shape[0], rows):
            r1 = min(r0 + rows, p.shape[0])
            yield r0, r1, int8_mm(g_cols[r0:r1], a, self.kernel,
                                  out=self._accumulator(r1 - r0, cols))


class FactoredAdam(FactoredStep, torch.optim.Adam):
    """torch.optim.Adam (fused; decoupled: AdamW's weight decay) with step_factored."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, *,
                 decoupled: bool = False, kernel: Kernel = "auto") -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, fused=True,
                         decoupled_weight_decay=decoupled)
        self.kernel = kernel
        self._acc = None

    def _fits(self, p: torch.Tensor, g_q: QTensor, a_q: QTensor, group: dict) -> bool:
        return self._factors_fit(p, g_q, a_q) and self._fits_state(p, group)

    def _fits_state(self, p: torch.Tensor, group: dict) -> bool:
        """The C kernels' rules for p, its group and its state: a contiguous float32 CPU tensor,
        float32 moments laid out as p, neither amsgrad nor maximize."""
        state = self.state.get(p, {})  # .get: the defaultdict would keep an empty entry
        return (p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous()
                and not group["amsgrad"] and not group["maximize"]
                and all(state[k].is_contiguous() and state[k].dtype == torch.float32
                        for k in ("exp_avg", "exp_avg_sq") if k in state))

    @torch.no_grad()
    def step_factored(self, p: torch.Tensor, g_q: QTensor, a_q: QTensor) -> float | None:
        """One Adam step of the (N, D) weight p whose gradient is g_q^T a_q: g_q (K, N), a_q
        (K, D), int8 with 0-d scales. Returns max|p| after the step (NaN if a value is not
        finite), or None where it set p.grad instead, for step() to apply."""
        group = self._group_of(p)
        if not self._fits(p, g_q, a_q, group):
            return self._form_gradient(p, g_q, a_q)
        m, v, hyper = self._advance(p, group)
        # the gradient's scale exactly as the plain path multiplies it: one float32 product
        g_scale = float(g_q.scale * a_q.scale)
        fused = self._kernel_rows(p, g_q.q.shape[0], 64 // math.gcd(p.shape[1], 64))
        if fused is not None:
            amax = fastsr.adam_int32_factored(p, m, v, g_q.q, a_q.q, g_scale, *hyper, *fused)
            if amax is not None:
                torch.autograd.graph.increment_version(p)  # written through a pointer
                return amax
        amax = 0.0
        for r0, r1, acc in self._gradient_blocks(p, g_q, a_q):
            amax = fastsr.adam_int32(p[r0:r1], m[r0:r1], v[r0:r1], acc, g_scale, *hyper, amax)
            if amax is None:  # _fits and the state's layout rule this out
                raise RuntimeError("step_factored: the fused Adam kernel refused its operands")
        # the kernel wrote through a pointer: tell autograd (and FFDense's weight cache)
        torch.autograd.graph.increment_version(p)
        return amax

    @torch.no_grad()
    def step_direct(self, params: list[torch.Tensor]) -> bool:
        """step() for just `params`, each with a float .grad (a unit's bias), through the same C
        kernel (ffq_adam_f32), one call each: torch.optim's per-step machinery costs more than
        Adam's arithmetic on a thousand values (0.2-0.4 ms an FF step of the MLP, issue 5).
        The same update as step(). Returns False, having stepped nothing, where a parameter does
        not fit the kernel (no C library, another dtype or device, a sparse gradient,
        amsgrad, maximize): step() is then the way. The .grad are left for zero_grad."""
        todo = [(p, self._group_of(p)) for p in params]
        fits = fastsr.available() and all(
            p.grad is not None and not p.grad.is_sparse and p.grad.is_contiguous()
            and p.grad.dtype == torch.float32 and p.grad.device == p.device
            and self._fits_state(p, group) for p, group in todo)
        if not fits or self._has_step_hooks():
            return False
        for p, group in todo:
            m, v, hyper = self._advance(p, group)
            if fastsr.adam_float(p, m, v, p.grad, *hyper) is None:  # ruled out above
                raise RuntimeError("step_direct: the fused Adam kernel refused its operands")
            torch.autograd.graph.increment_version(p)
        return True

    def _advance(self, p: torch.Tensor, group: dict) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """p's moments and the step's hyperparameters (lr, b1, b2, t, eps, wd, decoupled) for
        fastsr's Adam kernels, its step count moved on by one; its state made first as
        torch.optim.Adam makes a fused parameter's."""
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        b1, b2 = (float(b) for b in group["betas"])
        hyper = (float(group["lr"]), b1, b2, float(state["step"]), float(group["eps"]),
                 float(group["weight_decay"]), bool(group.get("decoupled_weight_decay", False)))
        return state["exp_avg"], state["exp_avg_sq"], hyper
