"""RunMeasurement around a real (tiny) training loop: the dict metrics.json gets."""

import contextlib
import json
import os
import time

import pytest

from ffint8.data import load_dataset, to_float_images
from ffint8.measure.energy import CpuTimeMeter
from ffint8.measure.opcount import epoch_ops, mlp_layers
from ffint8.measure.record import RunMeasurement
from ffint8.models import create_model
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.loop import FFTrainer

EVAL_PAUSE = 0.25  # seconds added to each evaluation


def tiny_run(excluded: bool):
    cfg = TrainConfig(dataset="synthetic", hidden=(16, 16), epochs=2, limit_train=96,
                      limit_test=50, ff=FFConfig(algo="ff-int8", look_ahead="none"))
    data = load_dataset("synthetic", None, cfg.limit_train, cfg.limit_test)
    x, xt = to_float_images(data.train.images), to_float_images(data.test.images)
    trainer = FFTrainer(create_model("mlp", in_features=x.shape[1], hidden=cfg.hidden), cfg, 10)
    meas = RunMeasurement(cfg, len(data.train), x.shape[1], 10, meter=CpuTimeMeter(5.0))
    evaluate, eval_seconds = trainer.evaluate, []

    def timed_evaluate(*args):  # how run.py may leave evaluation out of the figures
        t0 = time.perf_counter()
        # made to last: the loop's own work outside the epochs (milliseconds, more on a busy
        # machine) must not outweigh the evaluation whose exclusion the test looks for
        with meas.excluded() if excluded else contextlib.nullcontext():
            acc = evaluate(*args)
            time.sleep(EVAL_PAUSE)
        eval_seconds.append(time.perf_counter() - t0)
        return acc

    trainer.evaluate = timed_evaluate
    meas.begin()
    trainer.fit(x, data.train.labels, xt, data.test.labels)
    out = meas.end()
    train_seconds = sum(e.seconds for e in trainer.history)
    return cfg, x.shape[1], out, train_seconds, sum(eval_seconds)


@pytest.mark.parametrize("excluded", [False, True])
def test_end_gives_the_bench_fields_json_ready(excluded):
    cfg, d, out, train_s, eval_s = tiny_run(excluded)
    json.dumps(out)  # serialisable as it is
    metered = out["measurement"]["energy"]["seconds"]
    if excluded:
        assert train_s <= metered < train_s + eval_s
    else:
        assert metered >= train_s + eval_s
    assert out["energy_source"] == "estimate:cpu-time" and out["energy_j"] > 0
    assert out["peak_rss_mb"] > 10 and out["train_memory_mb"] >= 0
    assert out["train_file_mb"] == out["measurement"]["memory"]["file_growth_mb"]
    if os.path.exists("/proc/self/status"):  # Linux: RssFile is read
        assert out["train_file_mb"] is not None
    want = epoch_ops("ff-int8", mlp_layers(d, cfg.hidden), cfg.batch_size, 96, look_ahead="none",
                     peer=cfg.ff.peer_weight > 0)
    assert out["ops"]["per_epoch"] == want.to_dict()
    assert out["ops"]["run"] == (want * 2).to_dict()
    assert 0 < out["arith_energy_j"] < out["energy_j"]
    m = out["measurement"]
    assert m["energy"]["measured"] is False and "W per busy core" in m["energy"]["note"]
    assert m["footprint"]["code"]["total_mb"] > m["footprint"]["minimal"]["total_mb"] > 0
    assert m["memory"]["baseline_rss_mb"] > 0


def test_end_without_begin_raises():
    cfg = TrainConfig(dataset="synthetic")
    with pytest.raises(RuntimeError, match="before begin"):
        RunMeasurement(cfg, 10, 784, 10, meter=CpuTimeMeter()).end()


def test_unknown_model_gives_notes_not_errors():
    cfg = TrainConfig(dataset="synthetic", model="resnet18-someday")
    meas = RunMeasurement(cfg, 10, 784, 10, meter=CpuTimeMeter())
    meas.begin()
    out = meas.end()
    assert out["ops"] is None and out["arith_energy_j"] is None
    assert any("resnet18-someday" in n for n in out["measurement"]["notes"])
