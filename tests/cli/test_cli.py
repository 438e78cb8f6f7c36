"""The command line end to end on the synthetic set and on small IDX files the tests write."""

import json
import subprocess
import sys

import pytest
import torch

from ffint8.cli import config_from_args, main, parse_args
from ffint8.data import write_idx

SMALL = ["--dataset", "synthetic", "--hidden", "64,64", "--limit-train", "1000",
         "--limit-test", "100", "--batch-size", "32", "--no-progress"]


@pytest.mark.parametrize("algo,look", [("ff-int8", "collab"), ("ff-fp32", "chain")])
def test_train_writes_metrics_and_checkpoint(tmp_path, algo, look, capsys):
    out = tmp_path / "run"
    rc = main(["train", *SMALL, "--epochs", "2", "--algo", algo, "--look-ahead", look,
               "--lambda-start", "0.1", "--lr", "0.003", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("model", "dataset", "algo", "look_ahead", "epochs", "test_accuracy",
                "train_seconds", "kernel"):
        assert key in m
    assert m["algo"] == algo and m["look_ahead"] == look and m["dataset"] == "synthetic"
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]
    assert set(m["epochs"][0]) >= {"epoch", "train_loss", "test_accuracy", "seconds"}
    assert m["test_accuracy"] > 0.5  # the synthetic set is easy; chance is 0.1
    assert (m["kernel"] == "float32") == (algo == "ff-fp32")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "model.pt")]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["test_accuracy"] == pytest.approx(m["test_accuracy"])


def _error(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


@pytest.mark.parametrize("flags,needle", [
    (["--model", "nope"], "unknown model 'nope'"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
    (["--algo", "bp-magic"], "--algo"),
    (["--look-ahead", "sideways"], "--look-ahead"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "-1"], "--lr"),
    (["--chain-depth", "0"], "--chain-depth"),
])
def test_bad_flags_give_one_line_errors(tmp_path, capsys, flags, needle):
    rc, err = _error(capsys, ["train", *SMALL, *flags, "--out", str(tmp_path / "r")])
    assert rc == 2
    assert needle in err and err.count("\n") == 1


def test_missing_data_dir(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    rc, err = _error(capsys, ["train", "--dataset", "mnist", "--data-dir", str(missing),
                              "--out", str(tmp_path / "r")])
    assert rc == 2 and str(missing) in err


def test_corrupt_data_file(tmp_path, capsys):
    d = tmp_path / "mnist"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte", torch.zeros(10, 28, 28, dtype=torch.uint8))
    write_idx(d / "train-labels-idx1-ubyte", torch.zeros(10, dtype=torch.uint8))
    write_idx(d / "t10k-images-idx3-ubyte", torch.zeros(5, 28, 28, dtype=torch.uint8))
    bad = d / "t10k-labels-idx1-ubyte"
    write_idx(bad, torch.zeros(5, dtype=torch.uint8))
    bad.write_bytes(bad.read_bytes()[:-2])  # truncated
    rc, err = _error(capsys, ["train", "--dataset", "mnist", "--data-dir", str(d),
                              "--out", str(tmp_path / "r")])
    assert rc == 2 and str(bad) in err and "truncated" in err


def test_eval_rejects_foreign_and_mismatched_checkpoints(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    rc, err = _error(capsys, ["eval", "--checkpoint", str(junk)])
    assert rc == 2 and str(junk) in err
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    rc, err = _error(capsys, ["eval", "--checkpoint", str(other)])
    assert rc == 2 and "not an ffint8 checkpoint" in err
    rc, err = _error(capsys, ["eval", "--checkpoint", str(tmp_path / "missing.pt")])
    assert rc == 2 and "not found" in err


def test_checkpoint_of_another_shape(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    blob = torch.load(out / "model.pt", weights_only=True)
    blob["config"]["hidden"] = [32, 32]  # says one model, holds another's weights
    torch.save(blob, out / "model.pt")
    rc, err = _error(capsys, ["eval", "--checkpoint", str(out / "model.pt")])
    assert rc == 2 and "do not fit" in err


def test_module_entry_point_and_no_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "ffint8", "train", "--model", "nope",
                          "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert res.returncode == 2
    assert "unknown model" in res.stderr and "Traceback" not in res.stderr


def test_resume_ends_exactly_like_an_uninterrupted_run(tmp_path):
    # a constant rate: a schedule (the default cooldown) would stretch when --epochs grows
    common = [*SMALL, "--lr", "0.003", "--look-ahead", "chain", "--lambda-start", "0.05",
              "--lr-schedule", "constant"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", *common, "--epochs", "3", "--out", str(full)]) == 0
    assert main(["train", *common, "--epochs", "1", "--out", str(part)]) == 0
    assert (part / "checkpoint.pt").is_file()
    assert main(["train", "--resume", str(part), "--epochs", "3", "--no-progress"]) == 0
    a = torch.load(full / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(part / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma = json.loads((full / "metrics.json").read_text())
    mb = json.loads((part / "metrics.json").read_text())
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in ma["epochs"]]
    assert strip == [{k: v for k, v in e.items() if k != "seconds"} for e in mb["epochs"]]


def test_resume_with_more_epochs_says_the_schedule_stretches(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--lr-schedule", "cooldown", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "cooldown learning-rate schedule now spans 2 epochs" in out
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert "schedule now spans" not in capsys.readouterr().out  # same epochs: nothing stretches


def test_resume_without_checkpoint(tmp_path, capsys):
    rc, err = _error(capsys, ["train", "--resume", str(tmp_path)])
    assert rc == 2 and "no checkpoint.pt" in err


def test_resume_refuses_options_that_change_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run)]) == 0
    before = (run / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    rc, err = _error(capsys, ["train", "--resume", str(run), "--epochs", "2", "--hidden", "32,32",
                              "--algo", "bp-fp32", "--out", str(tmp_path / "other")])
    assert rc == 2 and err.count("\n") == 1
    assert "--hidden 32,32 (the run has 64,64)" in err
    assert "--algo bp-fp32 (the run has ff-int8)" in err and "--out" in err
    assert "--batch-size" not in err  # given the same as the run had: not a conflict
    rc, err = _error(capsys, ["train", "--resume", str(run), "--preset", "paper"])
    assert rc == 2 and "--look-ahead collab (the run has chain)" in err
    assert (run / "checkpoint.pt").read_bytes() == before  # nothing was trained or written
    assert json.loads((run / "metrics.json").read_text())["epochs"][-1]["epoch"] == 1


def test_weight_per_channel_by_flag_config_file_and_resume(tmp_path, capsys):
    # The one option whose flag is not spelled as its config field (weight_channel).
    assert config_from_args(parse_args(["train", "--weight-per-channel"])).ff.weight_channel
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("weight_per_channel: true\n")
    assert config_from_args(parse_args(["train", "--config", str(cfg_file)])).ff.weight_channel
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    rc, err = _error(capsys, ["train", "--resume", str(run), "--weight-per-channel"])
    assert rc == 2 and "--weight-per-channel True (the run has False)" in err
    rc, err = _error(capsys, ["train", "--resume", str(run), "--config", str(cfg_file)])
    assert rc == 2 and "--weight-per-channel True (the run has False)" in err


def test_resume_takes_the_first_command_line_again(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run)]) == 0
    assert main(["train", *SMALL, "--epochs", "2", "--out", str(run), "--resume", str(run)]) == 0
    assert [e["epoch"] for e in json.loads((run / "metrics.json").read_text())["epochs"]] == [1, 2]


def test_resume_may_change_threads_and_eval_every(tmp_path, one_torch_thread):
    # A run may move to a machine with other cores, and be scored more or less often: neither
    # changes what is trained, so both are taken, and the run's files then name the new values.
    # (The last epoch of each command is always scored.)
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--threads", "2", "--eval-every", "5",
                 "--out", str(run)]) == 0
    text = (run / "config.yaml").read_text()
    assert "threads: 2" in text and "eval_every: 5" in text
    assert main(["train", "--resume", str(run), "--epochs", "4", "--threads", "1"]) == 0
    text = (run / "config.yaml").read_text()
    assert "threads: 1" in text and "eval_every: 5" in text  # not given: the run's own kept
    assert torch.get_num_threads() == 1
    assert main(["train", "--resume", str(run), "--epochs", "7", "--eval-every", "1"]) == 0
    text = (run / "config.yaml").read_text()
    assert "threads: 1" in text and "eval_every: 1" in text
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert [e["test_accuracy"] is None for e in epochs] == [True, False, True, False, False,
                                                            False, False]


def test_resume_from_a_model_file_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run)]) == 0
    (run / "checkpoint.pt").write_bytes((run / "model.pt").read_bytes())
    capsys.readouterr()
    rc, err = _error(capsys, ["train", "--resume", str(run), "--epochs", "2"])
    assert rc == 2 and "weights only" in err and "checkpoint.pt" in err


@pytest.mark.parametrize("model,flags,needle", [
    ("resnet18", ["--hidden", "10,10"], "--hidden: model resnet18 does not take it"),
    ("mlp", ["--width", "0.5", "--label-plane"], "--width, --label-plane: model mlp does not take them"),
])
def test_a_shape_option_the_model_does_not_take_is_refused(tmp_path, capsys, model, flags, needle):
    rc, err = _error(capsys, ["train", "--model", model, *flags, "--dataset", "synthetic",
                              "--out", str(tmp_path / "r")])
    assert rc == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_config_file_sets_defaults_and_flags_override(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('dataset = "synthetic"\nhidden = [32]\nlimit_train = 300\nlimit_test = 50\n'
                   'epochs = 2\nlr = 0.002\n[ff]\nlook-ahead = "chain"\n')
    out = tmp_path / "r"
    assert main(["train", "--config", str(cfg), "--epochs", "1", "--no-progress",
                 "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["look_ahead"] == "chain" and m["config"]["lr"] == 0.002
    assert len(m["epochs"]) == 1  # the flag won over the file
    assert "look_ahead: chain" in (out / "config.yaml").read_text()


def test_bad_config_file(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epoch: 3\n")
    rc, err = _error(capsys, ["train", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert rc == 2 and str(cfg) in err and "unknown option 'epoch'" in err


def test_info_command(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("torch:", "cpu_int8_dot:", "int8_kernel_cpu:", "cuda_available:", "energy_rapl:"):
        assert key in out


def test_export_rejects_unknown_format(tmp_path, capsys):
    rc, err = _error(capsys, ["export", "--checkpoint", str(tmp_path / "m.pt"), "--format", "tflite"])
    assert rc == 2 and "--format" in err


def test_checkpoint_of_another_model_or_algorithm(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--algo", "ff-fp32", "--out", str(out)]) == 0
    ckpt = str(out / "model.pt")
    rc, err = _error(capsys, ["eval", "--checkpoint", ckpt, "--algo", "ff-int8"])
    assert rc == 2 and "trained with ff-fp32" in err and "--algo ff-int8" in err
    rc, err = _error(capsys, ["predict", "--checkpoint", ckpt, "--model", "resnet18", "x.png"])
    assert rc == 2 and "holds mlp" in err
    capsys.readouterr()
    assert main(["eval", "--checkpoint", ckpt, "--algo", "ff-fp32", "--model", "mlp"]) == 0


def test_tensorboard_flag(tmp_path, capsys):
    out = tmp_path / "tb"
    argv = ["train", *SMALL, "--epochs", "1", "--tensorboard", "--out", str(out)]
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        rc, err = _error(capsys, argv)
        assert rc == 2 and "tensorboard" in err
    else:
        assert main(argv) == 0
        assert any((out / "tensorboard").iterdir())


def test_progress_bar_off_when_not_a_terminal(tmp_path):
    res = subprocess.run([sys.executable, "-m", "ffint8", "train", *SMALL[:-1], "--epochs", "1",
                          "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "step/s" not in res.stderr and "s/step" not in res.stderr and "\r" not in res.stderr
    assert "epoch   1" in res.stdout  # the per-epoch line still reports progress
