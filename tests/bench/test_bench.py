"""`ffint8 bench`: validation before running, cells in processes, resume, failures, the report."""

import csv
import json
import subprocess
from pathlib import Path

import pytest

import ffint8.bench.matrix as matrix
import ffint8.bench.plots as plots
from ffint8.bench import BenchSpec, report
from ffint8.cli import main
from ffint8.errors import ConfigError

TINY = ["--dataset", "synthetic", "--limit-train", "200", "--limit-test", "50", "--epochs", "1",
        "--extra", "--hidden 32", "--threads", "1"]


@pytest.mark.parametrize("argv,message", [
    (["--models", "mlp,vgg"], "--models: unknown model 'vgg'"),
    (["--algos", "ff-int8,ff-int4"], "--algos: unknown algorithm 'ff-int4'"),
    (["--dataset", "imagenet"], "--dataset: unknown dataset 'imagenet'"),
    (["--seeds", "0,x"], "--seeds must be comma-separated integers"),
    (["--extra", "--seed 3"], "--extra may not set --seed"),
    (["--extra", "--hiden 32"], "unrecognized arguments: --hiden"),
    (["--extra", "--lr -1"], "cell mlp_fashion-mnist_ff-int8_s0: --lr must be > 0"),
    (["--models", "mlp,resnet18", "--extra", "--hidden 32"],
     "cell resnet18_fashion-mnist_ff-int8_s0: --hidden: model resnet18 does not take it"),
    (["--mmap-threshold", "0"], "--mmap-threshold must be 1 to 33554432 bytes"),
    (["--mmap-threshold", str(64 * 2**20)], "--mmap-threshold must be 1 to 33554432 bytes"),
])
def test_bad_matrix_fails_before_anything_runs(tmp_path, capsys, argv, message):
    out = tmp_path / "bench"
    assert main(["bench", "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "cells").exists()


def fake_metrics(path, algo, acc, seconds, nested=False, measured=True):
    m = {"model": "mlp", "dataset": "fashion-mnist", "algo": algo, "test_accuracy": acc,
         "train_seconds": seconds,
         "epochs": [{"epoch": 1, "test_accuracy": acc - 0.02, "seconds": seconds / 2},
                    {"epoch": 2, "test_accuracy": acc, "seconds": seconds / 2}]}
    fields = {"peak_rss_mb": 400.0, "train_memory_mb": seconds / 10,
              "train_file_mb": seconds / 20, "energy_j": 3 * seconds,
              "energy_source": "estimate:cpu-time", "arith_energy_j": 0.5,
              "ops": {"per_epoch": {"int8_mul": 7, "int32_add": 7, "fp32_mul": 1, "fp32_add": 2,
                                    "quantized": 3}}}
    if measured:
        m.update({"measurement": fields} if nested else fields)
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").write_text(json.dumps(m))


@pytest.fixture
def fake_bench(tmp_path):
    spec = BenchSpec(models=("mlp",), algos=("ff-int8", "bp-fp32", "bp-gdai8", "ff-fp32"),
                     epochs=2, out=tmp_path, seeds=(0, 1))
    cells = {c.algo + str(c.seed): c.directory(spec) for c in spec.cells()}
    fake_metrics(cells["ff-int80"], "ff-int8", 0.86, 100.0)
    fake_metrics(cells["ff-int81"], "ff-int8", 0.84, 100.0, nested=True)
    for seed in "01":
        fake_metrics(cells["bp-fp32" + seed], "bp-fp32", 0.88, 200.0)
        fake_metrics(cells["bp-gdai8" + seed], "bp-gdai8", 0.87, 125.0)
    fake_metrics(cells["ff-fp320"], "ff-fp32", 0.85, 80.0, measured=False)  # before run.py records
    cells["ff-fp321"].mkdir(parents=True)
    (cells["ff-fp321"] / "error.json").write_text(json.dumps({"error": "exit status 3: diverged"}))
    return spec


def test_report_rows_csv_json_and_table(fake_bench):
    logs = []
    report(fake_bench, log=logs.append)
    out = fake_bench.out
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 8
    by = {(r["algo"], r["seed"]): r for r in rows}
    assert by[("ff-int8", "1")]["train_memory_mb"] == "10.0"  # nested under "measurement"
    assert by[("ff-int8", "0")]["ops_int8_mul"] == "7"
    assert by[("ff-fp32", "0")]["energy_j"] == "" and by[("ff-fp32", "0")]["status"] == "ok"
    assert by[("ff-fp32", "1")]["status"] == "failed" and "diverged" in by[("ff-fp32", "1")]["error"]
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["seeds"] == [0, 1] and len(data["rows"]) == 8
    assert data["rows"][0]["ops"]["quantized"] == 3
    table = (out / "table.md").read_text()
    # mean of the two ff-int8 seeds, 85.00 +- 1.41, beside the paper's 94.3
    assert "| MLP | fashion-mnist | 88.00 ± 0.00 (paper 94.5; -6.50 pts) | 87.00 ± 0.00 (paper 93.8; " \
           "-6.80 pts) | 85.00 ± 1.41 (paper 94.3; -9.30 pts) | 85.00 |" in table
    assert "| 100.0 (paper 313; -68.1%) |" in table
    assert "| mlp | fashion-mnist | bp-gdai8 | 400.0 | 6.25 | 0.5 | 62.5 |" in table
    assert by[("ff-int8", "1")]["train_file_mb"] == "5.0"
    # ours 100 / 200 s = 0.50x; paper 313 / 482 = 0.65x; memory 10 / 20 MB; energy 300 / 600 J
    assert "| MLP | BP-FP32 | 0.50x (paper 0.65x) | 0.50x (paper 0.47x) | 0.50x (paper 0.57x) | " \
           "-3.00 pts (paper -0.20 pts) |" in table
    assert "| MLP | BP-GDAI8 | 0.80x (paper 0.91x) |" in table
    assert "mlp_fashion-mnist_ff-fp32_s1: failed: exit status 3: diverged" in table
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "bars.png").is_file()


def test_no_paper_figures_for_another_dataset(tmp_path):
    spec = BenchSpec(models=("mlp",), algos=("ff-int8",), epochs=2, out=tmp_path,
                     dataset="synthetic")
    fake_metrics(spec.cells()[0].directory(spec), "ff-int8", 0.9, 10.0)
    report(spec, plots=False, log=lambda s: None)
    assert "paper 94.3" not in (tmp_path / "table.md").read_text()


def test_plots_are_optional(fake_bench, monkeypatch):
    monkeypatch.setattr(plots, "_pyplot", lambda: None)
    logs = []
    report(fake_bench, log=logs.append)
    assert any("matplotlib is not installed" in line for line in logs)
    assert (fake_bench.out / "table.md").is_file() and not (fake_bench.out / "bars.png").exists()


def test_failed_cell_is_recorded_and_the_bench_goes_on(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(cmd, stdout, stderr, env, timeout):
        calls.append(cmd)
        out = cmd[cmd.index("--out") + 1]
        if "ff-int8" in cmd:
            stderr.write("Traceback ...\nffint8: error: boom\n")
            return subprocess.CompletedProcess(cmd, 2)
        if "1" == cmd[cmd.index("--seed") + 1]:
            raise subprocess.TimeoutExpired(cmd, timeout)
        fake_metrics(Path(out), "ff-fp32", 0.5, 1.0)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(matrix.subprocess, "run", fake_run)
    rc = main(["bench", "--out", str(tmp_path), "--algos", "ff-int8,ff-fp32", "--seeds", "0,1",
               "--timeout", "5", "--no-plots", "--threads", "3"])
    assert rc == 1 and len(calls) == 4
    log = capsys.readouterr().out
    assert "[1/4] mlp_fashion-mnist_ff-int8_s0: FAILED" in log and "boom" in log
    assert "[3/4] mlp_fashion-mnist_ff-fp32_s0: done" in log
    assert "[4/4] mlp_fashion-mnist_ff-fp32_s1: FAILED" in log and "timed out after 5s" in log
    assert calls[0][1:4] == ["-m", "ffint8", "train"] and calls[0][-2:] == ["--threads", "3"]
    err = json.loads((tmp_path / "cells/mlp_fashion-mnist_ff-int8_s0/error.json").read_text())
    assert "ffint8: error: boom" in err["error"] and err["returncode"] == 2
    rows = {r["cell"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert rows["mlp_fashion-mnist_ff-fp32_s0"]["status"] == "ok"
    assert rows["mlp_fashion-mnist_ff-int8_s1"]["status"] == "failed"


@pytest.mark.slow  # two fresh `ffint8 train` processes
def test_two_real_cells_then_resume(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--out", str(out), "--algos", "ff-int8,ff-fp32", *TINY]
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert "[2/2] mlp_synthetic_ff-fp32_s0: done" in log
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["algo"] for r in rows] == ["ff-int8", "ff-fp32"]
    assert all(r["status"] == "ok" and 0 <= float(r["accuracy"]) <= 1 for r in rows)
    cfg = (out / "cells/mlp_synthetic_ff-int8_s0/config.yaml").read_text()
    assert "hidden: [32]" in cfg and "threads: 1" in cfg  # --extra and --threads reached the cell

    def no_run(*a, **k):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(matrix.subprocess, "run", no_run)
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished before, skipped") == 2


def test_bp_extra_reaches_only_the_backprop_cells(tmp_path):
    spec = BenchSpec(models=("mlp",), algos=("ff-int8", "bp-fp32"), epochs=1, out=tmp_path,
                     extra=("--hidden", "32"), bp_extra=("--lr", "0.001"))
    ff, bp = spec.cells()
    assert "--lr" not in ff.train_argv(spec) and "--hidden" in ff.train_argv(spec)
    argv = bp.train_argv(spec)
    assert argv[argv.index("--lr") + 1] == "0.001" and argv.index("--lr") > argv.index("--hidden")
    with pytest.raises(ConfigError, match="--bp-extra may not set --seed"):
        BenchSpec(models=("mlp",), algos=("bp-fp32",), epochs=1, out=tmp_path, bp_extra=("--seed", "1"))


def test_bp_extra_is_checked_and_reported(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--out", str(out), *TINY, "--algos", "ff-fp32,bp-fp32",
                 "--bp-extra", "--lr -1"]) == 2
    assert "cell mlp_synthetic_bp-fp32_s0: --lr must be > 0" in capsys.readouterr().err
    assert main(["bench", "--out", str(out), *TINY, "--algos", "ff-fp32,bp-fp32",
                 "--bp-extra", "--lr 0.001 --lr-schedule constant", "--no-plots"]) == 0
    cfg = (out / "cells" / "mlp_synthetic_bp-fp32_s0" / "config.yaml").read_text()
    assert "lr: 0.001" in cfg and "lr_schedule: constant" in cfg
    ff_cfg = (out / "cells" / "mlp_synthetic_ff-fp32_s0" / "config.yaml").read_text()
    assert "lr: 0.001" not in ff_cfg
    table = (out / "table.md").read_text()
    assert "Backprop cells also: `--lr 0.001 --lr-schedule constant`" in table


def test_mmap_threshold_reaches_every_cell_and_the_table(tmp_path, monkeypatch, capsys):
    envs = []

    def fake_run(cmd, stdout, stderr, env, timeout):
        envs.append(env)
        fake_metrics(Path(cmd[cmd.index("--out") + 1]), "ff-int8", 0.5, 1.0)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(matrix.subprocess, "run", fake_run)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    base = ["bench", "--algos", "ff-int8", "--seeds", "0,1", "--no-plots", "--threads", "1"]
    assert main([*base, "--out", str(tmp_path / "a"), "--mmap-threshold", "131072"]) == 0
    assert [e["MALLOC_MMAP_THRESHOLD_"] for e in envs] == ["131072", "131072"]
    assert "MALLOC_MMAP_THRESHOLD_=131072" in (tmp_path / "a/table.md").read_text()
    settings = json.loads((tmp_path / "a/results.json").read_text())["settings"]
    assert settings["mmap_threshold"] == 131072
    envs.clear()
    assert main([*base, "--out", str(tmp_path / "b")]) == 0  # without it: the caller's malloc
    assert envs and all("MALLOC_MMAP_THRESHOLD_" not in e for e in envs)
    assert "MALLOC_MMAP_THRESHOLD_" not in (tmp_path / "b/table.md").read_text()
