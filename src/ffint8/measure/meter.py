"""The energy meter interface: configuration, readings, and the two kinds of meter.

EnergyMeter keeps the bookkeeping every backend shares (metered stretches, pauses, a polling
thread, failures that make a reading None); PowerMeter integrates sampled power, CounterMeter
unwraps cumulative counters. The backends are in ffint8.measure.energy.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ffint8.errors import ConfigError

BACKENDS = ("auto", "ina3221", "nvml", "rapl", "cpu-time")


@dataclass(frozen=True)
class MeterConfig:
    """How energy is metered. watts_per_core (cpu-time estimate only): 5 W per busy core is near
    TDP / cores of current x86 server parts (e.g. 280 W / 64 cores for an EPYC 7763); set yours.
    sample_interval: seconds between INA3221 power samples; poll_interval: between RAPL reads."""

    backend: str = "auto"
    sample_interval: float = 0.05
    poll_interval: float = 1.0
    watts_per_core: float = 5.0
    root: str = "/"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"invalid energy backend {self.backend!r}; choose one of: "
                              f"{', '.join(BACKENDS)}")
        for name in ("sample_interval", "poll_interval", "watts_per_core"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"energy meter {name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class EnergyReading:
    """Energy over the metered stretches: joules (None: unknown), wall seconds metered, the
    backend, whether it was measured (False: an estimate), and joules per rail."""

    joules: float | None
    seconds: float | None
    backend: str
    measured: bool
    rails: dict[str, float | None] = field(default_factory=dict)
    note: str = ""

    @property
    def source(self) -> str:
        return self.backend if self.measured else f"estimate:{self.backend}"

    def to_dict(self) -> dict:
        return {"joules": self.joules, "seconds": self.seconds, "backend": self.backend,
                "measured": self.measured, "source": self.source, "rails": dict(self.rails),
                "note": self.note}


class MeterUnavailable(Exception):
    """This backend cannot run here (no files, no driver, not permitted)."""


class EnergyMeter:
    """Base: subclasses give _poll(), which brings self._cum (joules per rail, cumulative since
    the meter started) up to date; a thread calls it every `interval` seconds when set."""

    backend = "?"
    measured = True
    note = ""
    clock = staticmethod(time.perf_counter)  # seconds; tests set a fake clock on an instance

    def __init__(self, interval: float | None = None) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._cum: dict[str, float] = {}
        self._acc: dict[str, float] = {}
        self._seconds = 0.0
        self._error: str | None = None
        self._mark: tuple[float, dict[str, float]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- backend hooks
    def _poll(self) -> None:
        raise NotImplementedError

    def _total(self, rails: dict[str, float]) -> float:
        return sum(rails.values())

    def _close(self) -> None:
        """Release what the backend holds (NVML handle)."""

    # -- interface
    def _read(self) -> dict[str, float] | None:
        with self._lock:
            try:
                self._poll()
            except Exception as exc:  # a meter must never take the training run down
                self._error = self._error or f"{self.backend} read failed: {type(exc).__name__}: {exc}"
            return None if self._error else dict(self._cum)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def start(self) -> None:
        if self._thread is not None or self._mark is not None:
            raise RuntimeError("energy meter already started")
        self._cum, self._acc, self._seconds, self._error = {}, {}, 0.0, None
        self.resume()
        if self.interval:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"ffint8-{self.backend}",
                                            daemon=True)
            self._thread.start()

    def pause(self) -> None:
        """Leave out what follows (until resume) from the reading."""
        if self._mark is None:
            return
        t0, r0 = self._mark
        r1 = self._read()
        self._seconds += self.clock() - t0
        if r1 is not None:
            for k, v in r1.items():
                self._acc[k] = self._acc.get(k, 0.0) + v - r0.get(k, 0.0)
        self._mark = None

    def resume(self) -> None:
        if self._mark is None:
            self._mark = (self.clock(), self._read() or {})

    def stop(self) -> EnergyReading:
        self.pause()
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._close()
        rails: dict[str, float | None] = dict(self._acc)
        joules = None if self._error or not rails else self._total(self._acc)
        if self._error:
            rails = dict.fromkeys(rails)
        note = self._error or self.note
        return EnergyReading(joules, self._seconds, self.backend, self.measured, rails, note)


class PowerMeter(EnergyMeter):
    """Integrates sampled power (watts per rail) over time."""

    def __init__(self, interval: float) -> None:
        super().__init__(interval)
        self._last: tuple[float, dict[str, float]] | None = None

    def _power(self) -> dict[str, float]:
        raise NotImplementedError

    def _poll(self) -> None:
        t, p = self.clock(), self._power()
        if self._last is not None:
            t0, p0 = self._last
            for k, w in p.items():
                self._cum[k] = self._cum.get(k, 0.0) + 0.5 * (w + p0.get(k, w)) * (t - t0)
        else:
            self._cum = dict.fromkeys(p, 0.0)
        self._last = (t, p)

    def start(self) -> None:
        self._last = None
        super().start()


class CounterMeter(EnergyMeter):
    """Cumulative hardware counters (joules per rail), unwrapped with each rail's range."""

    def __init__(self, interval: float | None) -> None:
        super().__init__(interval)
        self._raw_last: dict[str, float] | None = None
        self.ranges: dict[str, float | None] = {}

    def _raw(self) -> dict[str, float]:
        raise NotImplementedError

    def _poll(self) -> None:
        raw = self._raw()
        if self._raw_last is None:
            self._cum = dict.fromkeys(raw, 0.0)
        else:
            for k, v in raw.items():
                delta = v - self._raw_last[k]
                if delta < 0:  # the counter wrapped (at most once since the last read)
                    span = self.ranges.get(k)
                    if not span:
                        raise ArithmeticError(f"counter {k} went backwards and has no known range")
                    delta += span
                self._cum[k] += delta
        self._raw_last = raw

    def start(self) -> None:
        self._raw_last = None
        super().start()
