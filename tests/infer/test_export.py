"""FFInference (the traceable float graph) and export_onnx, checked with onnxruntime."""

import sys

import pytest
import torch

from ffint8.data import load_dataset, to_float_images
from ffint8.errors import CheckpointError, ConfigError
from ffint8.export import FFInference, export_onnx, inference_module
from ffint8.models import create_model
from ffint8.quant import QMAX
from ffint8.train.config import FFConfig, TrainConfig
from ffint8.train.loop import FFTrainer
from ffint8.train.run import load_checkpoint

ALGOS = ["ff-fp32", "ff-int8"]


@pytest.fixture(scope="module")
def batch():
    """float32 (64, 784) synthetic test images in [0, 1]."""
    return to_float_images(load_dataset("synthetic", limit_train=1, limit_test=64).test.images)


def trainer_scores(checkpoint, x):
    model, cfg, blob = load_checkpoint(checkpoint)
    return FFTrainer(model, cfg, blob["num_classes"]).predict_scores(x)


def test_inference_equals_trainer_fp32(checkpoints, batch):
    module, _ = inference_module(checkpoints["ff-fp32"])
    x = batch.clone()
    with torch.no_grad():
        got = module(x)
    assert got.shape == (64, 10) and got.dtype == torch.float32
    assert torch.allclose(got, trainer_scores(checkpoints["ff-fp32"], batch), rtol=0, atol=1e-5)
    assert torch.equal(x, batch)  # the input is not modified


@pytest.mark.parametrize("norm", ["rms", "l2"])
@pytest.mark.parametrize("goodness", ["mean", "sum"])
@pytest.mark.parametrize("units", ["all", "skip-first"])
def test_inference_follows_norm_goodness_and_scored_units(batch, norm, goodness, units):
    torch.manual_seed(0)
    model = create_model("mlp", hidden=(24, 16, 8))
    cfg = TrainConfig(hidden=(24, 16, 8), ff=FFConfig(algo="ff-fp32", norm=norm, goodness=goodness,
                                                      predict_units=units))
    with torch.no_grad():
        got = FFInference(model, cfg.ff, 10)(batch[:16])
    want = FFTrainer(model, cfg, 10).predict_scores(batch[:16])
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channel", [False, True])
def test_int8_weights_are_dequantised(channel):
    torch.manual_seed(0)
    model = create_model("mlp", hidden=(16,))
    module = FFInference(model, FFConfig(algo="ff-int8", weight_channel=channel), 10)
    w, w0 = module.weight0, model.units[0].weight.detach()
    absmax = w0.abs().amax(dim=1, keepdim=True) if channel else w0.abs().amax()
    steps = w / (absmax / QMAX)
    assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= QMAX + 1e-3
    assert torch.allclose(w, w0, atol=float(absmax.max()) / QMAX / 2 + 1e-7)
    assert torch.equal(module.bias0, model.units[0].bias.detach())


def test_int8_inference_close_to_int8_trainer(checkpoints, batch):
    module, _ = inference_module(checkpoints["ff-int8"])
    with torch.no_grad():
        labels = module(batch).argmax(1)
    agree = (labels == trainer_scores(checkpoints["ff-int8"], batch).argmax(1)).float().mean()
    assert agree >= 0.95


def test_missing_extra_is_a_config_error(monkeypatch, checkpoints, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'ffint8\[export\]'"):
        export_onnx(checkpoints["ff-fp32"], tmp_path / "m.onnx")


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    return pytest.importorskip("onnxruntime")


def run_onnx(ort, path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["scores"]
    return torch.from_numpy(session.run(["scores"], {"images": x.numpy()})[0])


@pytest.fixture(scope="module")
def exported(ort, checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    return {algo: export_onnx(checkpoints[algo], out / "sub" / f"{algo}.onnx") for algo in ALGOS}


def test_onnx_fp32_matches_pytorch(ort, exported, checkpoints, batch):
    want = trainer_scores(checkpoints["ff-fp32"], batch)
    got = run_onnx(ort, exported["ff-fp32"], batch)
    assert got.shape == (64, 10)
    assert torch.allclose(got, want, rtol=0, atol=1e-4)
    assert torch.equal(got.argmax(1), want.argmax(1))
    one = run_onnx(ort, exported["ff-fp32"], batch[:1])  # the batch is dynamic
    assert one.shape == (1, 10) and torch.allclose(one, want[:1], rtol=0, atol=1e-4)


def test_onnx_int8_labels(ort, exported, checkpoints, batch):
    module, _ = inference_module(checkpoints["ff-int8"])
    got = run_onnx(ort, exported["ff-int8"], batch).argmax(1)
    with torch.no_grad():
        assert torch.equal(got, module(batch).argmax(1))
    agree = (got == trainer_scores(checkpoints["ff-int8"], batch).argmax(1)).float().mean()
    assert agree >= 0.95


def test_onnx_file_is_complete(ort, exported):
    import onnx

    path = exported["ff-int8"]
    assert not list(path.parent.glob("*.tmp"))
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 10
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["ffint8.algo"] == "ff-int8" and props["ffint8.num_classes"] == "10"


def test_onnx_old_opset(ort, checkpoints, batch, tmp_path):
    import onnx

    path = export_onnx(checkpoints["ff-fp32"], tmp_path / "old.onnx", opset=13)
    assert [o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx")] == [13]
    want = trainer_scores(checkpoints["ff-fp32"], batch)
    assert torch.allclose(run_onnx(ort, path, batch), want, rtol=0, atol=1e-4)


def test_onnx_bad_inputs(ort, checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="--opset"):
        export_onnx(checkpoints["ff-fp32"], tmp_path / "m.onnx", opset=3)
    with pytest.raises(CheckpointError, match="nope.pt"):
        export_onnx(tmp_path / "nope.pt", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("kw", [{"model": "resnet18", "width": 0.125}, {"model": "mlp", "classifier": True}])
def test_export_refuses_what_it_cannot_export(kw):
    name = kw.pop("model")
    model = create_model(name, hidden=(16,), **kw)
    with pytest.raises(ConfigError, match="export supports FF-trained MLPs only"):
        FFInference(model, FFConfig(), 10)
