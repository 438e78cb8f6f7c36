"""--device: the names it takes, the errors where the hardware is missing, and training that moves
batches to the model's device. The CUDA tests run where a GPU is visible (skipped elsewhere)."""

import json

import pytest
import torch

from ffint8.cli import main
from ffint8.devices import check_device_name, describe_device, resolve_device
from ffint8.errors import ConfigError
from ffint8.train.config import TrainConfig

SMALL = ["--dataset", "synthetic", "--hidden", "64,64", "--limit-train", "600",
         "--limit-test", "100", "--batch-size", "32", "--no-progress"]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:0", "cuda:12", "auto"])
def test_accepted_names(name):
    check_device_name(name)
    assert TrainConfig(device=name).device == name


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "mps", "", "cpu:0"])
def test_other_names_are_config_errors_naming_the_flag(name):
    with pytest.raises(ConfigError, match="--device") as e:
        TrainConfig(device=name)
    assert "cpu, cuda, cuda:N or auto" in str(e.value)


def test_cpu_and_auto_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert describe_device(torch.device("cpu")) == "cpu"


def test_cuda_without_a_gpu_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"--device cuda: .*(no CUDA|without CUDA)"):
        resolve_device("cuda")
    # a CUDA build on a machine whose GPU is not visible says that, not "no CUDA support"
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        resolve_device("cuda:0")


def test_a_device_index_past_the_last_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"--device cuda:2: there are only 2 CUDA devices "
                                          r"\(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"there is only 1 CUDA device \(cuda:0\)"):
        resolve_device("cuda:1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_train_on_a_missing_gpu_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ffint8: error: --device cuda:") and err.count("\n") == 1
    assert not out.exists()


def test_eval_takes_a_device(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--limit-test", "100",
                 "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == m["test_accuracy"]
    assert m["device"] == "cpu"
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err


def test_explicit_cpu_trains_exactly_as_the_default(tmp_path):
    # the default is the CPU: naming it changes nothing (same weights, same figures)
    runs = []
    for i, extra in enumerate(([], ["--device", "cpu"])):
        out = tmp_path / f"run{i}"
        assert main(["train", *SMALL, "--epochs", "2", *extra, "--out", str(out)]) == 0
        runs.append(json.loads((out / "metrics.json").read_text()))
        state = torch.load(out / "model.pt", weights_only=True)["state_dict"]
        runs[-1]["weights"] = state
    a, b = runs
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    assert a["test_accuracy"] == b["test_accuracy"]
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])


def test_resume_may_name_a_device(tmp_path, capsys):
    # a run may move to another machine: --device is taken on resume, like --threads
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--device", "cpu"]) == 0
    assert "device: cpu" in (run / "config.yaml").read_text()
    # and the refusal of other changes names --device among what may change
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3", "--lr", "0.1"]) == 2
    may = "--epochs, --eval-every, --eval-batch-size, --norm-batches, --threads and --device may change"
    assert may in capsys.readouterr().err


def test_distributed_refuses_a_gpu_before_joining_a_group(tmp_path, capsys):
    assert main(["train", *SMALL, "--distributed", "--device", "cuda",
                 "--out", str(tmp_path / "r")]) == 2
    assert "--device cuda is not supported with it" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# on a GPU


@CUDA
@pytest.mark.parametrize("algo", ["ff-int8", "ff-fp32", "bp-fp32", "bp-int8"])
def test_mlp_trains_on_cuda_as_on_the_cpu(tmp_path, algo):
    # the same batches (drawn on the CPU) and initial weights; the random stream of stochastic
    # rounding differs (torch's on the GPU), so the figures are close, not equal
    acc = {}
    for dev in ("cpu", "cuda"):
        out = tmp_path / dev
        assert main(["train", *SMALL, "--epochs", "2", "--algo", algo, "--device", dev,
                     "--out", str(out)]) == 0
        m = json.loads((out / "metrics.json").read_text())
        acc[dev] = m["test_accuracy"]
        if dev == "cuda":
            assert m["device"].startswith("cuda:")
            if algo in ("ff-int8", "bp-int8"):
                assert m["kernel"].startswith("int_mm")
    assert acc["cuda"] > 0.5 and abs(acc["cuda"] - acc["cpu"]) < 0.15


@CUDA
@pytest.mark.parametrize("flags", [["--optimizer", "adam8"], ["--predict", "softmax",
                                                                "--negatives", "hard"],
                                   ["--negatives", "hard"], ["--optimizer", "sgd"]])
def test_mlp_options_on_cuda(tmp_path, flags):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "2", "--device", "cuda", *flags,
                 "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] > 0.5


@CUDA
@pytest.mark.parametrize("model", ["resnet18", "mobilenetv2", "efficientnet_b0"])
def test_cnns_train_on_cuda(tmp_path, model):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "synthetic", "--model", model, "--width", "0.125",
                 "--limit-train", "64", "--limit-test", "32", "--epochs", "1", "--no-progress",
                 "--device", "cuda", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert "forward im2col" in m["kernel"] and m["epochs"][0]["train_loss"] == m["epochs"][0][
        "train_loss"]  # finite (not NaN)


@CUDA
def test_a_cuda_run_resumes_on_the_cpu(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--device", "cuda", "--optimizer", "adam8",
                 "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--device", "cpu"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert len(m["epochs"]) == 2 and m["device"] == "cpu" and m["test_accuracy"] > 0.5


@CUDA
def test_adam8_on_cuda_matches_its_cpu_path():
    from ffint8.train.adam8 import Adam8

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3000, generator=gen)
    grads = [torch.randn(3000, generator=gen) for _ in range(5)]
    params = {}
    for dev in ("cpu", "cuda"):
        p = torch.nn.Parameter(w.clone().to(dev))
        opt = Adam8([p], lr=0.01, fused=False, seed=3)  # the PyTorch path on both devices
        for g in grads:
            p.grad = g.to(dev)
            opt.step()
        params[dev] = p.detach().cpu()
    torch.testing.assert_close(params["cuda"], params["cpu"], rtol=1e-5, atol=1e-6)


def test_float_exact_convolutions_are_refused_off_the_cpu():
    from ffint8.train.config import FFConfig
    from ffint8.train.run import check_device_kernel

    cnn = TrainConfig(model="resnet18", device="cuda", ff=FFConfig(int8_kernel="float-exact"))
    with pytest.raises(ConfigError, match="--int8-kernel float-exact: resnet18's convolutions"):
        check_device_kernel(cnn, torch.device("cuda"))
    check_device_kernel(cnn, torch.device("cpu"))  # the CPU takes it
    # the MLP's float-exact GEMM is exact on a GPU too, and float algorithms use no int8 kernel
    check_device_kernel(TrainConfig(device="cuda", ff=FFConfig(int8_kernel="float-exact")),
                        torch.device("cuda"))
    check_device_kernel(TrainConfig(model="resnet18", device="cuda",
                                    ff=FFConfig(algo="ff-fp32", int8_kernel="float-exact")),
                        torch.device("cuda"))


# ---------------------------------------------------------------------------------------------
# denormals


@pytest.fixture
def denormals_restored():
    yield
    torch.set_flush_denormal(False)  # the suite's other tests see the default arithmetic


def test_flush_denormals_flushes_on_this_thread(denormals_restored):
    from ffint8.devices import flush_denormals

    flush_denormals(False)
    tiny = torch.tensor([1e-39])  # a float32 denormal (made while they are kept)
    assert float(tiny * 1.0) > 0
    flush_denormals(True)
    if not torch.set_flush_denormal(True):  # a CPU without FTZ/DAZ (not x86 SSE3)
        pytest.skip("this CPU cannot flush denormals")
    assert float(tiny * 1.0) == 0.0
    flush_denormals(False)
    assert float(tiny * 1.0) > 0


def test_the_default_flushes_and_old_runs_keep_what_they_did():
    assert TrainConfig().flush_denormals is True
    saved = TrainConfig().to_dict()
    assert TrainConfig.from_saved(saved).flush_denormals is True
    del saved["flush_denormals"]  # a config written before the field existed
    assert TrainConfig.from_saved(saved).flush_denormals is False


@pytest.mark.parametrize("flags,expected", [([], True), (["--no-flush-denormals"], False),
                                            (["--flush-denormals"], True)])
def test_train_sets_the_flag_first(tmp_path, monkeypatch, denormals_restored, flags, expected):
    calls = []
    real = torch.set_flush_denormal
    monkeypatch.setattr(torch, "set_flush_denormal", lambda on: calls.append(on) or real(on))
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", *flags, "--out", str(out)]) == 0
    assert calls[0] is expected
    assert f"flush_denormals: {str(expected).lower()}" in (out / "config.yaml").read_text()
    assert json.loads((out / "metrics.json").read_text())["config"]["flush_denormals"] is expected


def test_eval_sets_the_flag_before_building_the_model(tmp_path, monkeypatch, denormals_restored):
    """Worker threads take the setting only when they start: eval sets it before the model's
    construction can start them (as train does)."""
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    from ffint8.train import run

    order = []
    real_flag, real_build = torch.set_flush_denormal, run.build_model
    monkeypatch.setattr(torch, "set_flush_denormal",
                        lambda on: order.append(("flush", on)) or real_flag(on))
    monkeypatch.setattr(run, "build_model",
                        lambda *a, **k: order.append(("build",)) or real_build(*a, **k))
    run.evaluate_checkpoint(out / "model.pt")
    assert order[:2] == [("flush", True), ("build",)]
