"""Run directories: per-epoch CSV, divergence keeps the last good checkpoint, SIGKILL mid-epoch."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from ffint8.errors import CheckpointError, DivergenceError
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.loop import FFTrainer
from ffint8.train.run import kernel_description, load_checkpoint, run_training


def small_cfg(**kw):
    base = dict(dataset="synthetic", hidden=(32, 32), epochs=2, limit_train=300, limit_test=50,
                lr=0.003, ff=FFConfig(algo="ff-int8", look_ahead="none"))
    base.update(kw)
    return TrainConfig(**base)


def test_epoch_csv_written_every_epoch(tmp_path):
    run_training(small_cfg(), tmp_path, progress=False, log=lambda s: None)
    rows = list(csv.DictReader(open(tmp_path / "epochs.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 for r in rows)


def test_divergence_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    original = FFTrainer.train_epoch

    def poisoned(self, *args, **kw):
        if self.epoch == 1:  # the second epoch starts from a NaN weight
            with torch.no_grad():
                self.units[0].weight[0, 0] = float("nan")
        return original(self, *args, **kw)

    monkeypatch.setattr(FFTrainer, "train_epoch", poisoned)
    with pytest.raises(DivergenceError) as info:
        run_training(small_cfg(), tmp_path, progress=False, log=lambda s: None)
    msg = str(info.value)
    assert "epoch 2, step 1" in msg and "unit 1" in msg and "checkpoint.pt (after epoch 1)" in msg
    _, _, blob = load_checkpoint(tmp_path / "checkpoint.pt")
    assert blob["trainer"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in blob["trainer"]["model"].values())
    assert not (tmp_path / "metrics.json").exists()


def test_cli_divergence_exit_code(tmp_path):
    res = subprocess.run([sys.executable, "-m", "ffint8", "train", "--dataset", "synthetic",
                          "--hidden", "32", "--limit-train", "300", "--limit-test", "50",
                          "--lr", "1e30", "--no-progress", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 3, res.stderr
    assert "training diverged at epoch 1" in res.stderr and "Traceback" not in res.stderr


def test_sigkill_mid_epoch_loses_at_most_that_epoch(tmp_path):
    common = [sys.executable, "-m", "ffint8", "train", "--dataset", "synthetic",
              "--hidden", "300,300", "--limit-train", "2000", "--limit-test", "100",
              "--batch-size", "16", "--epochs", "3", "--no-progress"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*common, "--out", str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert ckpt.exists(), "the first epoch never finished"
    os.kill(proc.pid, signal.SIGKILL)  # now inside epoch 2
    proc.wait()
    _, _, blob = load_checkpoint(ckpt)
    assert blob["trainer"]["epoch"] == 1
    assert not (killed / "metrics.json").exists()
    subprocess.run([sys.executable, "-m", "ffint8", "train", "--resume", str(killed),
                    "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    full = tmp_path / "full"
    subprocess.run([*common, "--out", str(full)], check=True, stdout=subprocess.DEVNULL)
    a = torch.load(full / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(killed / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_weight_after_last_step_is_caught_before_the_checkpoint(tmp_path):
    calls = []

    def poison(opt, args, kwargs):
        calls.append(1)
        # 300 samples / 32 = 10 steps, each stepping the two units in turn (the per-unit
        # update): only the last update goes bad
        if len(calls) == 10 * 2:
            opt.param_groups[0]["params"][2].data[0, 0] = float("inf")  # unit 2's weight

    # a global hook, not a patched Adam.step: torch binds an optimiser class's step when its
    # first instance is made, so a subclass (FactoredAdam) made earlier would not see a patch
    handle = register_optimizer_step_post_hook(poison)
    try:
        with pytest.raises(DivergenceError,
                           match="epoch 1, step 10: the weights of unit 2 are no longer"):
            run_training(small_cfg(epochs=1), tmp_path, progress=False, log=lambda s: None)
    finally:
        handle.remove()
    assert len(calls) == 20
    assert not (tmp_path / "checkpoint.pt").exists()


def test_kernel_description_names_what_ran():
    assert kernel_description(TrainConfig(ff=FFConfig(algo="ff-fp32"))) == "float32"
    mlp = kernel_description(TrainConfig(ff=FFConfig(int8_kernel="reference")))
    assert mlp.startswith("reference;") and "conv" not in mlp
    cnn = kernel_description(TrainConfig(model="resnet18", ff=FFConfig(int8_kernel="reference")))
    # the convolutions' kernel per op, then the dense head's GEMM
    assert cnn.startswith("conv: forward reference, weight reference, input reference; dense: reference")


def test_metrics_say_when_weights_step_from_int8_factors(tmp_path, one_torch_thread):
    run_training(small_cfg(epochs=1), tmp_path / "int8", progress=False, log=lambda s: None)
    run_training(small_cfg(epochs=1, ff=FFConfig(algo="ff-fp32")), tmp_path / "fp32",
                 progress=False, log=lambda s: None)
    kernels = [json.loads((tmp_path / d / "metrics.json").read_text())["kernel"]
               for d in ("int8", "fp32")]
    from ffint8.quant import fastsr

    assert ("int8 gradient factors" in kernels[0]) == fastsr.available()
    own_rows = "AMX tiles" in kernels[0] or "AVX-512 VNNI" in kernels[0]
    assert own_rows == fastsr.vnni_rows()  # the C kernel's own rows
    assert ("AMX tiles" in kernels[0]) == fastsr.amx_rows()
    assert "factors" not in kernels[1]
    named = kernel_description(TrainConfig(ff=FFConfig(int8_kernel="int_mm")), factored=True)
    assert "int8 gradient factors" in named and "VNNI" not in named  # int_mm forms them


def test_resume_with_another_config_is_refused_and_writes_nothing(tmp_path, one_torch_thread):
    run_training(small_cfg(epochs=1), tmp_path, progress=False, log=lambda s: None)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(CheckpointError, match="another configuration"):
        run_training(small_cfg(epochs=2, lr=0.01), tmp_path, progress=False, log=lambda s: None,
                     resume=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == files
    # what may change on resume does not count as another configuration
    run_training(small_cfg(epochs=2, threads=1, eval_every=2), tmp_path, progress=False,
                 log=lambda s: None, resume=True)
    assert load_checkpoint(tmp_path / "checkpoint.pt")[1].threads == 1


def test_resume_config_refuses_a_field_a_resume_may_not_change(tmp_path):
    from ffint8.train.run import resume_config

    with pytest.raises(ValueError, match="lr"):
        resume_config(tmp_path, {"epochs": 3, "lr": 0.1})
    with pytest.raises(CheckpointError, match="no checkpoint.pt"):  # the changes pass; no file
        resume_config(tmp_path, {"epochs": 3, "threads": None})
