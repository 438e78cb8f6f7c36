"""Giving the C allocator's free heap back to the system, during training too.

glibc keeps the memory that Python and PyTorch free mapped in the process: below its trim
threshold at the top of the heap, and in free holes in mid-heap. A training loop allocates and
frees tensors of changing sizes every step, so its resident set creeps upward as the heap
fragments, though the memory in use does not grow. malloc_trim(0) hands the free pages back.

The training loops (FF and backprop alike) call it every RELEASE_EVERY steps, at 0.06 ms a call.
For the FF-INT8 MLP with adam8 it kept 3.5 MB of a 22 MB training memory off the resident set in
one epoch of 19200 images; over full epochs (`ffint8 bench`, session 14) one seed of three
measured 19.1 MB against 23 MB and two did not move, since the peak there comes later than the
creep. Backprop's peak, all activations and gradients alive at once inside a step, did not move.
Between steps it frees nothing in use, so it changes no result. Where the C library has no
malloc_trim (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools

RELEASE_EVERY = 10  # steps


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Give the C allocator's free heap pages back to the system (glibc's malloc_trim(0)), so
    that RSS is the memory in use. False where there is no such call (musl, macOS, Windows)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def after_step(step: int) -> None:
    """Called by a training loop after its step number `step` (from 0): every RELEASE_EVERY
    steps, release_free_heap()."""
    if (step + 1) % RELEASE_EVERY == 0:
        release_free_heap()
