"""RunMeasurement: memory, energy and operation counts of one training run, for metrics.json.

    meas = RunMeasurement(cfg, n_train=len(data.train), in_features=in_features,
                          num_classes=data.num_classes, model=model)
    meas.begin()                   # just before the training loop
    trainer.fit(...)               # optionally: with meas.excluded(): <evaluation>
    metrics.update(meas.end())     # after it

end() returns peak_rss_mb, train_memory_mb, energy_j, energy_source, arith_energy_j and ops at
the top level (what `ffint8 bench` tabulates) and the details under "measurement".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ffint8.errors import ConfigError
from ffint8.measure.arith import arithmetic_energy
from ffint8.measure.energy import EnergyMeter, MeterConfig, make_meter
from ffint8.measure.footprint import run_footprint
from ffint8.measure.memory import MemoryProbe
from ffint8.measure.opcount import run_ops


class RunMeasurement:
    """begin() / end() around a training loop; pause() / resume() (or `with excluded():`) leave
    a stretch out of the energy and, where the kernel allows, of the loop's peak memory.
    model: the model being trained, whose layer shapes the counts read (default: cfg's model,
    built for the purpose)."""

    def __init__(self, cfg, n_train: int, in_features: int, num_classes: int,
                 meter: EnergyMeter | None = None, meter_config: MeterConfig | None = None,
                 root: str = "/", model=None) -> None:
        self.cfg = cfg
        self.n_train = n_train
        self.in_features = in_features
        self.num_classes = num_classes
        self.model = model
        self.meter = meter if meter is not None else make_meter(meter_config or MeterConfig(root=root))
        self.memory = MemoryProbe(root)
        self._running = False

    def begin(self) -> None:
        self.memory.begin()  # the baseline first: the meter's thread is not training memory
        self.meter.start()
        self._running = True

    def pause(self) -> None:
        self.meter.pause()
        self.memory.pause()

    def resume(self) -> None:
        self.memory.resume()
        self.meter.resume()

    @contextmanager
    def excluded(self) -> Iterator[None]:
        """Leave the body (e.g. evaluation between epochs) out of the training figures."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def _counts(self) -> tuple[dict | None, dict | None, list[str]]:
        notes = []
        ops = fp = None
        try:
            ops = run_ops(self.cfg, self.n_train, self.in_features, self.num_classes, self.model)
        except ConfigError as exc:
            notes.append(f"ops: {exc}")
        try:
            fp = {kept: run_footprint(self.cfg, self.in_features, self.num_classes, kept,
                                      self.model).to_dict() for kept in ("code", "minimal")}
        except ConfigError as exc:
            notes.append(f"footprint: {exc}")
        return ops, fp, notes

    def end(self) -> dict:
        """Stop metering; the figures as a JSON-serialisable dict (None where unknown)."""
        if not self._running:
            raise RuntimeError("RunMeasurement.end() called before begin()")
        reading = self.meter.stop()
        mem = self.memory.end()
        self._running = False
        ops, fp, notes = self._counts()
        arith = arithmetic_energy(ops["run"]) if ops else None
        mem_d = mem.to_dict()
        return {
            "peak_rss_mb": mem_d["peak_rss_mb"],
            "train_memory_mb": mem_d["train_memory_mb"],
            "train_file_mb": mem_d["file_growth_mb"],
            "energy_j": reading.joules,
            "energy_source": reading.source,
            "arith_energy_j": arith.joules if arith else None,
            "ops": ops,
            "measurement": {
                "memory": mem_d,
                "energy": reading.to_dict(),
                "arith_energy": arith.to_dict() if arith else None,
                "footprint": fp,
                "notes": notes,
            },
        }
