"""Which device a run computes on: `--device cpu | cuda | cuda:N | auto`.

The data sets stay in host memory and go to the device a batch at a time; the random draws of
the training loop (shuffling, negative labels) stay on the CPU, so every device sees the same
batches. Stochastic rounding on a GPU uses torch's generator there, not the CPU's fused kernel,
so its random stream (not its distribution) differs from a CPU run's.
"""

from __future__ import annotations

import re

import torch

from ffint8.errors import ConfigError

DEVICE_FORMS = "cpu, cuda, cuda:N or auto"
_PATTERN = re.compile(r"cpu|auto|cuda(:\d+)?")


def check_device_name(name: str) -> None:
    """A ConfigError unless name is one of the accepted forms (no hardware is looked at)."""
    if not isinstance(name, str) or not _PATTERN.fullmatch(name):
        raise ConfigError(f"invalid --device {name!r}; choose one of: {DEVICE_FORMS}")


def resolve_device(name: str) -> torch.device:
    """The torch.device that --device `name` means here: auto is the first CUDA device where one
    is usable, else the CPU. A ConfigError, naming the flag, where CUDA is asked for and this
    torch build or machine has none, or too few devices."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA device is visible")
            raise ConfigError(f"--device {name}: {why} (torch {torch.__version__}); use "
                              "--device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name}: there {'is' if count == 1 else 'are'} only "
                              f"{count} CUDA device{'' if count == 1 else 's'} (cuda:0"
                              f"{'' if count == 1 else f' to cuda:{count - 1}'})")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def describe_device(device: torch.device) -> str:
    """The device in words for logs and metrics.json: "cpu", or "cuda:0 (NVIDIA H200)"."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock reading covers it (CUDA runs
    asynchronously); nothing to do on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flush_denormals(on: bool = True) -> None:
    """Flush float32 denormals to zero (FTZ/DAZ) on the CPU, or stop doing so.

    Training drives some weights, gradients and Adam moments below 2^-126, and on some CPUs every
    operation on such a value takes a slow microcode path: a bp-fp32 MLP step went from 6.5 to
    20-36 ms after about 600 steps on a Xeon with AMX, and a 256 x 2000 x 2000 product from 11 ms
    to 1.5 s. The setting is per thread and torch's worker threads take it from the thread that
    starts them, so call this before the first multi-threaded torch operation of the process
    (`ffint8 train` does, first thing); later it reaches the calling thread only."""
    torch.set_flush_denormal(on)
