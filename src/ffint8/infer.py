"""Classify image files with a trained checkpoint.

Images are expected as the data set has them: for Fashion-MNIST and MNIST a light object on a
dark background, roughly centred and filling the frame. A photo of a dark object on a light
background (a digit written on paper) needs invert=True. Each image is converted to grayscale
and resized (stretched, aspect ratio not kept) to the model's square side, sqrt(in_features).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ffint8.errors import ConfigError, DataError
from ffint8.train.loop import FFTrainer
from ffint8.train.run import load_checkpoint, make_trainer, prediction_config

FORMATS = ("PNG", "JPEG")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": FASHION_MNIST_CLASSES,
    "mnist": tuple(str(d) for d in range(10)),
}
MISSING_PILLOW = "reading images needs Pillow: pip install pillow"


def class_names(dataset: str, num_classes: int) -> tuple[str, ...] | None:
    """Names of the labels of a known data set (None if unknown or the count differs)."""
    names = CLASS_NAMES.get(dataset)
    return names if names is not None and len(names) == num_classes else None


def image_side(in_features: int) -> int:
    """The side of the square images a model with in_features inputs takes (784 -> 28)."""
    side = math.isqrt(in_features) if in_features > 0 else 0
    if side * side != in_features or side == 0:
        raise ConfigError(f"the model takes {in_features} inputs, not a square image "
                          "(in_features must be side * side)")
    return side


def _open_gray(path: Path):
    """Decode path as a grayscale ("L") Pillow image; DataError when it is not PNG or JPEG."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ConfigError(MISSING_PILLOW) from None
    if not path.exists():
        raise DataError(f"{path}: image file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        with Image.open(path) as img:
            if img.format not in FORMATS:
                raise DataError(f"{path}: not a readable PNG or JPEG image ({img.format} file)")
            img.load()  # decode now: a truncated or corrupt file fails here
            img = ImageOps.exif_transpose(img)  # photos: apply the camera's rotation
            return img.convert("L")
    except DataError:
        raise
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, ... for bad files
        raise DataError(f"{path}: not a readable PNG or JPEG image ({type(exc).__name__})") from None


def load_image(path: str | Path, in_features: int, invert: bool = False) -> torch.Tensor:
    """Read a PNG or JPEG file as a model input: float32 (in_features,) in [0, 1].

    The image becomes grayscale and is resized to side x side, side = sqrt(in_features), with
    a Lanczos filter (area-like when shrinking), then flattened row by row and scaled by 1/255,
    as to_float_images does for the data set. invert=True maps v to 1 - v, for dark objects on
    a light background. Raises DataError (naming the path) for a missing or unreadable file and
    ConfigError when in_features is not a square."""
    side = image_side(in_features)
    path = Path(path)
    img = _open_gray(path)
    from PIL import Image  # present: _open_gray imported it

    if img.size != (side, side):
        img = img.resize((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)  # (side * side,)
    x = pixels.to(torch.float32).div_(255.0)
    return 1.0 - x if invert else x


def load_images(paths: Sequence[str | Path], in_features: int, invert: bool = False) -> torch.Tensor:
    """Several files as one batch: float32 (len(paths), in_features)."""
    rows = [load_image(p, in_features, invert) for p in paths]
    return torch.stack(rows) if rows else torch.empty(0, in_features)


def score_batches(trainer: FFTrainer, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """FFTrainer.predict_scores over (N, D) in chunks: (N, C)."""
    parts = [trainer.predict_scores(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, trainer.num_classes)


def predict_files(checkpoint: str | Path, paths: Sequence[str | Path],
                  invert: bool = False) -> list[dict]:
    """Classify image files with one checkpoint (loaded once).

    Returns one dict per path, in order: "path" (str), "label" (int, the label of highest
    score), "scores" (C floats: the goodness summed over units with each label embedded) and,
    for fashion-mnist and mnist checkpoints, "name" (the label's class name).

    The INT8 path (ff-int8) quantises each unit's input with one scale per image, so a file's
    scores do not depend on the others; files are scored in batches of eval_batch_size."""
    model, cfg, blob = load_checkpoint(checkpoint)
    cfg = prediction_config(cfg, blob)
    num_classes, in_features = int(blob["num_classes"]), int(blob["in_features"])
    x = load_images(paths, in_features, invert)
    trainer = make_trainer(model, cfg, num_classes)
    scores = score_batches(trainer, x, cfg.eval_batch_size)
    names = class_names(cfg.dataset, num_classes)
    results = []
    for path, row in zip(paths, scores):
        label = int(row.argmax())
        item = {"path": str(path), "label": label, "scores": [float(s) for s in row]}
        if names is not None:
            item["name"] = names[label]
        results.append(item)
    return results
