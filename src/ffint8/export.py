"""Export a trained FF model as a plain float inference graph, and write it as ONNX.

FFInference computes what FFTrainer.predict_scores computes on the float path, with ordinary
traceable torch ops: each label in turn (the first unit forms the image's product once for all
of them), normalise, linear + ReLU per unit, goodness summed over units -> one score per label.
A checkpoint trained with ff-int8 is exported with its weights dequantised from their
round-to-nearest int8 quantisation (per tensor, or per output unit when cfg.ff.weight_channel);
the activations stay float in the exported graph, while the INT8 path also rounds every unit's
input to int8. So the exported graph and the INT8 PyTorch prediction may disagree on a few
borderline samples (close scores of two labels).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ffint8.errors import ConfigError, FFInt8Error
from ffint8.fileio import atomic_path
from ffint8.infer import class_names
from ffint8.nn.dense import FFDense
from ffint8.nn.functional import EPS
from ffint8.quant import quantize
from ffint8.train.config import FFConfig
from ffint8.train.run import load_checkpoint, prediction_config

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "images"
OUTPUT_NAME = "scores"
MISSING_EXTRA = "ONNX export needs the extra: pip install 'ffint8[export]'"
MIN_OPSET = 7  # the oldest opset torch's exporters know
DYNAMO_MIN_OPSET = 18  # the torch.export-based exporter's own opset; below it: TorchScript


def export_weight(weight: torch.Tensor, ff: FFConfig) -> torch.Tensor:
    """The (N, D) weight as the exported graph uses it: float, or dequantised from int8.

    On ff-int8 the weight is rounded to nearest, per tensor or per output unit (row) when
    ff.weight_channel, exactly as the INT8 forward quantises it, then scaled back to float32."""
    w = weight.detach().float()
    if not ff.int8:
        return w.clone()
    return quantize(w, "nearest", channel_dim=0 if ff.weight_channel else None).dequantize()


class FFInference(nn.Module):
    """Scores every label of flattened images: forward((B, D) in [0, 1]) -> (B, C) float32.

    scores[i, c] = sum over units of the goodness of image i with label c embedded (one-hot in
    its first C inputs). Weights are buffers (no gradients); the graph has no data-dependent
    control flow, so torch.export / ONNX see a fixed chain of units and a dynamic batch."""

    def __init__(self, model: nn.Module, ff: FFConfig, num_classes: int) -> None:
        super().__init__()
        units = list(model.units)
        if not all(isinstance(u, FFDense) for u in units) or getattr(model, "head", None) is not None:
            raise ConfigError("export supports FF-trained MLPs only so far, not convolutional "
                              "models or the backprop baselines")
        in_features = units[0].in_features
        if not 1 <= num_classes <= in_features:
            raise ConfigError(f"num_classes must be in [1, {in_features}], got {num_classes}")
        self.num_classes = num_classes
        self.in_features = in_features
        self.norm = ff.norm
        self.goodness = ff.goodness
        self.algo = ff.algo
        keep = torch.ones(in_features)
        keep[:num_classes] = 0.0
        self.register_buffer("keep", keep)
        for i, unit in enumerate(units):
            self.register_buffer(f"weight{i}", export_weight(unit.weight, ff))
            self.register_buffer(f"bias{i}", unit.bias.detach().float().clone())
        self.num_units = len(units)
        self.predict = ff.predict
        self.scored_units = ff.scored_units(len(units))  # goodness prediction sums these units
        if ff.predict == "softmax":  # one neutral-label pass and the linear readout
            neutral = torch.zeros(in_features)
            neutral[:num_classes] = 1.0 / num_classes
            self.register_buffer("neutral", neutral)
            self.readout_units = list(model.readout_units)
            self.register_buffer("readout_weight", model.readout.weight.detach().float().clone())
            self.register_buffer("readout_bias", model.readout.bias.detach().float().clone())

    def first_unit_each_label(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (C * B, N): the first unit's output for the images with label 0 embedded,
        then label 1, and so on (FFDense.forward_each_label). Every label's row has the image,
        zeros in the other C - 1 label inputs and one entry of 1, so the same norm: the image's
        product with W is formed once and each label adds its column of W."""
        h = x * self.keep  # the image, its first C inputs zero
        sq = h.square().sum(dim=1, keepdim=True) + 1.0  # + the label's one-hot entry
        r = (sq / self.in_features if self.norm == "rms" else sq).sqrt() + EPS
        w, b = self.weight0, self.bias0
        cols = w[:, : self.num_classes].t().unsqueeze(1)  # (C, 1, N)
        z = torch.matmul(h / r, w.t()).unsqueeze(0) + cols / r.unsqueeze(0)  # (C, B, N)
        return (z + b).relu().reshape(-1, w.shape[0])

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        """Length-normalise rows as ffint8.nn.functional.normalize does: (R, D) -> (R, D)."""
        sq = h.square()
        sq = sq.mean(dim=1, keepdim=True) if self.norm == "rms" else sq.sum(dim=1, keepdim=True)
        return h / (sq.sqrt() + EPS)

    def goodness_of(self, y: torch.Tensor) -> torch.Tensor:
        """Mean (or sum) of squared activities per row: (R, N) -> (R,)."""
        sq = y.square()
        return sq.mean(dim=1) if self.goodness == "mean" else sq.sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) float images in [0, 1] -> (B, C) goodness sums, one column per label (or the
        softmax readout's logits, for a model trained with --predict softmax)."""
        if self.predict == "softmax":
            h = x.float() * self.keep + self.neutral
            feats = []
            for i in range(self.num_units):
                w, b = getattr(self, f"weight{i}"), getattr(self, f"bias{i}")
                h = torch.addmm(b, self.normalize(h), w.t()).relu()
                if i in self.readout_units:
                    feats.append(self.normalize(h))
            return torch.addmm(self.readout_bias, torch.cat(feats, dim=1), self.readout_weight.t())
        h = self.first_unit_each_label(x.float())
        total = None
        for i in range(self.num_units):  # fixed at export time
            if i > 0:
                w, b = getattr(self, f"weight{i}"), getattr(self, f"bias{i}")
                h = torch.addmm(b, self.normalize(h), w.t()).relu()
            if i in self.scored_units:
                g = self.goodness_of(h)
                total = g if total is None else total + g
        return total.reshape(self.num_classes, -1).t()


def inference_module(checkpoint: str | Path) -> tuple[FFInference, dict]:
    """Load a checkpoint as an FFInference module (eval mode) and return it with its blob."""
    model, cfg, blob = load_checkpoint(checkpoint)
    module = FFInference(model, prediction_config(cfg, blob).ff, int(blob["num_classes"]))
    return module.eval(), blob


def _require_onnx() -> None:
    """ConfigError naming the extra when onnx or onnxscript cannot be imported."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError(MISSING_EXTRA) from None


def _check_opset(opset: int | None) -> None:
    """ConfigError unless opset is None or an integer ONNX opset the installed onnx knows."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int)
                              or not MIN_OPSET <= opset <= newest):
        raise ConfigError(f"--opset must be an integer in [{MIN_OPSET}, {newest}], got {opset!r}")


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints, log lines and deprecation warnings."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _to_onnx(module: FFInference, opset: int | None) -> onnx.ModelProto:
    """Trace module to an onnx.ModelProto with a dynamic batch.

    The torch.export-based exporter (needs onnxscript) for the default and opset >= 18; below
    18 its down-conversion of this graph fails (ReduceMean's axes), so the TorchScript exporter
    (dynamo=False, deprecated but present in torch 2.x) writes those opsets directly."""
    import onnx

    example = torch.rand(2, module.in_features)
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    with _quiet(), torch.no_grad():
        if opset is None or opset >= DYNAMO_MIN_OPSET:
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(module, (example,), None, dynamo=True, verbose=False,
                                        dynamic_shapes={"x": {0: batch}}, **names)
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(module, (example,), buffer, dynamo=False, **names,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        return onnx.load_from_string(buffer.getvalue())


def _graph_opset(proto: onnx.ModelProto) -> int:
    """The default-domain (ai.onnx) opset a ModelProto imports."""
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _annotate(proto: onnx.ModelProto, blob: dict, module: FFInference) -> None:
    """Fix the output shape to ("batch", C) and record the graph's origin in its metadata."""
    import onnx

    dims = proto.graph.output[0].type.tensor_type.shape.dim
    if len(dims) == 2:
        dims[0].dim_param = "batch"
        dims[1].dim_value = module.num_classes
    cfg = blob.get("config", {})
    names = class_names(cfg.get("dataset", ""), module.num_classes)
    props = {"ffint8.algo": module.algo, "ffint8.dataset": str(cfg.get("dataset", "")),
             "ffint8.num_classes": str(module.num_classes),
             "ffint8.in_features": str(module.in_features),
             "ffint8.input": "flattened images (B, D) float32 in [0, 1], as the data set has them"}
    if names:
        props["ffint8.class_names"] = ",".join(names)
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = f"Forward-Forward scores (B, {module.num_classes}): goodness per label"


def export_onnx(checkpoint: str | Path, out_path: str | Path, opset: int | None = None) -> Path:
    """Write checkpoint's FFInference graph as ONNX: input "images" (B, D) float32 with a
    dynamic batch, output "scores" (B, C). Written atomically (temporary file, then rename);
    returns out_path. opset None: the exporter's default."""
    _require_onnx()
    _check_opset(opset)
    import onnx

    module, blob = inference_module(checkpoint)
    out = Path(out_path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FFInt8Error(f"{out.parent}: cannot create the directory ({exc.strerror})") from None
    try:
        proto = _to_onnx(module, opset)
        onnx.checker.check_model(proto)
    except Exception as exc:  # exporter and checker raise many types
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        where = f"--opset {opset}" if opset is not None else str(out)
        raise FFInt8Error(f"{where}: ONNX export failed ({type(exc).__name__}: {first})") from None
    if opset is not None and _graph_opset(proto) != opset:
        raise ConfigError(f"--opset {opset}: the exporter wrote opset {_graph_opset(proto)} instead")
    _annotate(proto, blob, module)
    try:
        with atomic_path(out) as tmp:
            onnx.save(proto, tmp)
    except OSError as exc:
        raise FFInt8Error(f"{out}: cannot write the ONNX file ({exc.strerror})") from None
    return out
