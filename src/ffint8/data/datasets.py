"""Image classification datasets: MNIST-format directories, CIFAR-10 and a synthetic set.

All loaders return uint8 images (N, H, W) (colour: (N, C, H, W)) and int64 labels (N,) on the CPU;
conversion to float happens later (see :func:`ffint8.data.labels.to_float_images`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ffint8.data.cifar import read_cifar10
from ffint8.data.idx import read_idx
from ffint8.errors import ConfigError, DataError

DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist", "synthetic", "cifar10")
DEFAULT_DIRS: dict[str, Path] = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}

_MNIST_CLASSES = 10
# Role -> accepted base names; each is also tried with a ".gz" suffix.
# The dotted variants are how some mirrors name the files once unpacked.
_MNIST_FILES: dict[str, tuple[str, ...]] = {
    "training images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "training labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


# eq=False: field-wise == on tensors is ambiguous; identity equality/hash is what we want.
@dataclass(frozen=True, eq=False)
class Split:
    """One part (train or test) of a dataset.

    Attributes:
        images: uint8 (N, H, W), or (N, C, H, W) for colour images.
        labels: int64 (N,), values in [0, num_classes).
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dim() not in (3, 4) or self.images.dtype != torch.uint8:
            raise DataError(
                f"Split images must be uint8 (N, H, W) or (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1 or self.labels.dtype != torch.int64:
            raise DataError(
                f"Split labels must be int64 (N,), got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}"
            )
        if self.images.shape[0] != self.labels.shape[0]:
            raise DataError(
                f"Split has {self.images.shape[0]} images but {self.labels.shape[0]} labels"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class Dataset:
    """A named dataset with its train and test splits.

    Attributes:
        name: one of :data:`DATASETS`.
        train, test: the splits; images share ``image_shape``.
        num_classes: labels lie in [0, num_classes).
        image_shape: (H, W), e.g. (28, 28), or (C, H, W) for colour, e.g. (3, 32, 32).
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    image_shape: tuple[int, ...]


def load_mnist_format(directory: str | Path) -> tuple[Split, Split]:
    """Load the four MNIST-style IDX files from ``directory``.

    Accepts ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (or the dotted
    ``train-images.idx3-ubyte`` style), each raw or with ``.gz``.

    Returns:
        (train, test): images uint8 (N, H, W), labels int64 (N,) in [0, 10).

    Raises:
        DataError: the directory or a file is missing, a file is malformed, image and
            label counts differ, a label is out of range, or train/test image sizes differ.
    """
    directory = Path(directory)
    if not directory.exists():
        raise DataError(f"data directory {directory} does not exist")
    if not directory.is_dir():
        raise DataError(f"data directory {directory} is not a directory")
    paths = {role: _find_file(directory, role) for role in _MNIST_FILES}
    train = _load_split(paths["training images"], paths["training labels"], _MNIST_CLASSES)
    test = _load_split(paths["test images"], paths["test labels"], _MNIST_CLASSES)
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(
            f"{paths['test images']}: image size {_size(test.images)} differs from "
            f"{_size(train.images)} in {paths['training images']}"
        )
    return train, test


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a dataset by name.

    Args:
        name: "fashion-mnist" (reads ``DEFAULT_DIRS`` unless ``data_dir`` is given),
            "mnist" (needs ``data_dir``), "cifar10" (needs ``data_dir``: the CIFAR-10 python
            batches, or the cifar-10-batches-py directory inside it) or "synthetic" (generated,
            no files).
        data_dir: directory of the data files (MNIST-format IDX files or CIFAR-10 batches).
        limit_train, limit_test: keep only the first N samples (N >= 1); None keeps all.
        seed: seeds the synthetic set; ignored by the file-based sets.

    Raises:
        ConfigError: unknown name, bad limit, or "mnist" without ``data_dir``.
        DataError: the files are missing or malformed.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    _check_limit("limit_train", limit_train)
    _check_limit("limit_test", limit_test)
    if name == "synthetic":
        train, test = make_synthetic(seed=seed, num_classes=_MNIST_CLASSES)
    elif name == "cifar10":
        (x_train, y_train), (x_test, y_test) = read_cifar10(_resolve_dir(name, data_dir))
        train, test = Split(x_train, y_train), Split(x_test, y_test)
    else:
        train, test = load_mnist_format(_resolve_dir(name, data_dir))
    return Dataset(
        name=name,
        train=_take_first(train, limit_train),
        test=_take_first(test, limit_test),
        num_classes=_MNIST_CLASSES,
        image_shape=tuple(train.images.shape[1:]),
    )


def make_synthetic(
    seed: int = 0,
    num_train: int = 2000,
    num_test: int = 500,
    num_classes: int = 10,
    image_shape: tuple[int, int] = (28, 28),
) -> tuple[Split, Split]:
    """Build a small, deterministic, learnable image set with no files.

    Each class has a fixed random binary prototype (about a quarter of the pixels
    lit); a sample is its class prototype at a random brightness, with Gaussian noise on the
    lit pixels only: the background stays dark, as in MNIST, so an embedded label stands out.
    Labels are balanced (every class appears when N >= num_classes) and shuffled.

    Returns:
        (train, test): images uint8 (N, H, W), labels int64 (N,).
    """
    generator = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand((num_classes, *image_shape), generator=generator) < 0.25).float()
    train = _synthetic_split(prototypes, num_train, generator)
    test = _synthetic_split(prototypes, num_test, generator)
    return train, test


def _synthetic_split(prototypes: torch.Tensor, count: int, generator: torch.Generator) -> Split:
    """Draw ``count`` noisy samples of float (C, H, W) 0/1 prototypes."""
    num_classes = prototypes.shape[0]
    order = torch.randperm(count, generator=generator)
    labels = torch.arange(count, dtype=torch.int64)[order] % num_classes
    brightness = 150.0 + 100.0 * torch.rand((count, 1, 1), generator=generator)
    noise = 40.0 * torch.randn((count, *prototypes.shape[1:]), generator=generator)
    pixels = prototypes[labels] * (brightness + noise)
    images = pixels.round().clamp(0, 255).to(torch.uint8)
    return Split(images=images, labels=labels)


def _resolve_dir(name: str, data_dir: str | Path | None) -> Path:
    """Pick the directory for a file-based dataset, with a helpful error if there is none."""
    if data_dir is not None:
        return Path(data_dir)
    default = DEFAULT_DIRS.get(name)
    if default is None:
        raise ConfigError(f"--data-dir is required for {name}")
    if not default.is_dir():
        raise DataError(
            f"data directory {default} does not exist; install the Debian package "
            f"dataset-{name} or pass --data-dir"
        )
    return default


def _find_file(directory: Path, role: str) -> Path:
    """Return the first existing candidate file for ``role`` (raw before .gz)."""
    names = [base + suffix for base in _MNIST_FILES[role] for suffix in ("", ".gz")]
    for name in names:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory}: no {role} file found; looked for {', '.join(names)}")


def _load_split(images_path: Path, labels_path: Path, num_classes: int) -> Split:
    """Read and cross-check one images/labels file pair."""
    images = read_idx(images_path)
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise DataError(
            f"{images_path}: expected 3-D uint8 images (N, H, W), got "
            f"{_describe(images)}"
        )
    labels = read_idx(labels_path)
    if labels.dim() != 1 or labels.dtype != torch.uint8:
        raise DataError(f"{labels_path}: expected 1-D uint8 labels (N,), got {_describe(labels)}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has "
            f"{labels.shape[0]} labels"
        )
    if images.shape[0] == 0:
        raise DataError(f"{images_path}: contains no images")
    labels = labels.to(torch.int64)
    bad = (labels >= num_classes).nonzero()
    if bad.numel():
        index = int(bad[0, 0])
        raise DataError(
            f"{labels_path}: label {int(labels[index])} at index {index} is out of range "
            f"0..{num_classes - 1}"
        )
    return Split(images=images, labels=labels)


def _check_limit(flag: str, limit: int | None) -> None:
    """Reject limits that are not None or an int >= 1 (bool is not a count)."""
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"{flag} must be an integer >= 1 or None, got {limit!r}")


def _take_first(split: Split, limit: int | None) -> Split:
    """Keep the first ``limit`` samples; clone so the full tensors can be freed."""
    if limit is None or limit >= len(split):
        return split
    return Split(images=split.images[:limit].clone(), labels=split.labels[:limit].clone())


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} with shape {tuple(tensor.shape)}"


def _size(images: torch.Tensor) -> str:
    return "x".join(str(s) for s in images.shape[1:])
