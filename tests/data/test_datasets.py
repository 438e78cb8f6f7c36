"""Dataset loading: MNIST-format directories, limits, synthetic set and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ffint8.data import (
    DATASETS,
    DEFAULT_DIRS,
    Dataset,
    Split,
    load_dataset,
    load_mnist_format,
    write_idx,
)
from ffint8.data import datasets as datasets_module
from ffint8.errors import ConfigError, DataError

STANDARD = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _tensors(n_train: int = 30, n_test: int = 12, size: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "train_images": torch.randint(
            0, 256, (n_train, size, size), generator=g, dtype=torch.uint8
        ),
        "train_labels": (torch.arange(n_train) % 10).to(torch.uint8),
        "test_images": torch.randint(0, 256, (n_test, size, size), generator=g, dtype=torch.uint8),
        "test_labels": (torch.arange(n_test) % 10).to(torch.uint8),
    }


def _make_dir(
    directory: Path, suffix: str = "", dotted: bool = False, **overrides: torch.Tensor
) -> dict[str, Path]:
    """Write the four files into ``directory``; ``overrides`` replace any tensor."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {**_tensors(), **overrides}
    paths = {}
    for role, name in STANDARD.items():
        if dotted:
            name = name.replace("-idx", ".idx")
        paths[role] = directory / (name + suffix)
        write_idx(paths[role], tensors[role])
    return paths


@pytest.mark.parametrize("dotted", [False, True])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_load_mnist_format_names(tmp_path: Path, suffix: str, dotted: bool) -> None:
    _make_dir(tmp_path, suffix=suffix, dotted=dotted)
    train, test = load_mnist_format(tmp_path)
    expected = _tensors()
    assert torch.equal(train.images, expected["train_images"])
    assert torch.equal(test.images, expected["test_images"])
    assert train.labels.dtype == torch.int64 and test.labels.dtype == torch.int64
    assert train.labels.tolist() == expected["train_labels"].tolist()
    assert (len(train), len(test)) == (30, 12)


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(DataError, match=f"data directory {missing} does not exist"):
        load_mnist_format(missing)


def test_not_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"x")
    with pytest.raises(DataError, match="is not a directory") as info:
        load_mnist_format(path)
    assert str(path) in str(info.value)


def test_missing_file_lists_candidates(tmp_path: Path) -> None:
    paths = _make_dir(tmp_path, suffix=".gz")
    paths["test_labels"].unlink()
    with pytest.raises(DataError) as info:
        load_mnist_format(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "test labels" in message
    for name in ("t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte.gz", "t10k-labels.idx1-ubyte"):
        assert name in message


def test_count_mismatch(tmp_path: Path) -> None:
    paths = _make_dir(tmp_path, train_labels=torch.zeros(29, dtype=torch.uint8))
    with pytest.raises(DataError) as info:
        load_mnist_format(tmp_path)
    assert str(info.value) == (
        f"{paths['train_images']} has 30 images but {paths['train_labels']} has 29 labels"
    )


def test_label_out_of_range(tmp_path: Path) -> None:
    labels = (torch.arange(12) % 10).to(torch.uint8)
    labels[7] = 10
    paths = _make_dir(tmp_path, test_labels=labels)
    with pytest.raises(DataError, match="label 10 at index 7 is out of range 0..9") as info:
        load_mnist_format(tmp_path)
    assert str(paths["test_labels"]) in str(info.value)


@pytest.mark.parametrize(
    ("role", "tensor", "fragment"),
    [
        ("train_images", torch.zeros(30, 36, dtype=torch.uint8), "expected 3-D uint8 images"),
        ("train_images", torch.zeros(30, 6, 6, dtype=torch.int32), "expected 3-D uint8 images"),
        ("train_labels", torch.zeros(30, 1, dtype=torch.uint8), "expected 1-D uint8 labels"),
        ("train_labels", torch.zeros(30, dtype=torch.int32), "expected 1-D uint8 labels"),
        ("test_images", torch.zeros(12, 5, 5, dtype=torch.uint8), "differs from"),
    ],
)
def test_malformed_contents(tmp_path: Path, role: str, tensor: torch.Tensor, fragment: str) -> None:
    paths = _make_dir(tmp_path, **{role: tensor})
    with pytest.raises(DataError, match=fragment) as info:
        load_mnist_format(tmp_path)
    assert str(paths[role]) in str(info.value)


def test_corrupt_file_is_reported_through_loader(tmp_path: Path) -> None:
    paths = _make_dir(tmp_path, suffix=".gz")
    paths["train_images"].write_bytes(b"\x1f\x8b junk")
    with pytest.raises(DataError, match="corrupt gzip stream") as info:
        load_mnist_format(tmp_path)
    assert str(paths["train_images"]) in str(info.value)


def test_load_dataset_mnist_and_limits(tmp_path: Path) -> None:
    _make_dir(tmp_path)
    full = load_dataset("mnist", data_dir=tmp_path)
    assert isinstance(full, Dataset)
    assert (full.name, full.num_classes, full.image_shape) == ("mnist", 10, (6, 6))
    limited = load_dataset("mnist", data_dir=str(tmp_path), limit_train=7, limit_test=3)
    assert (len(limited.train), len(limited.test)) == (7, 3)
    assert torch.equal(limited.train.images, full.train.images[:7])
    assert torch.equal(limited.test.labels, full.test.labels[:3])
    bigger = load_dataset("mnist", data_dir=tmp_path, limit_train=1000)
    assert len(bigger.train) == 30


def test_fashion_mnist_with_data_dir(tmp_path: Path) -> None:
    _make_dir(tmp_path, suffix=".gz")
    assert len(load_dataset("fashion-mnist", data_dir=tmp_path).train) == 30


def test_fashion_mnist_default_dir_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DEFAULT_DIRS, "fashion-mnist", tmp_path / "absent")
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist")
    message = str(info.value)
    assert str(tmp_path / "absent") in message
    assert "dataset-fashion-mnist" in message and "--data-dir" in message


def test_mnist_requires_data_dir() -> None:
    with pytest.raises(ConfigError, match="--data-dir is required for mnist"):
        load_dataset("mnist")


def test_unknown_dataset() -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("x")
    assert str(info.value) == "unknown dataset 'x'; choose one of: fashion-mnist, mnist, synthetic, cifar10"


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "10"])
@pytest.mark.parametrize("flag", ["limit_train", "limit_test"])
def test_bad_limit(flag: str, bad: object) -> None:
    with pytest.raises(ConfigError, match=flag):
        load_dataset("synthetic", **{flag: bad})


def test_synthetic_shape_and_determinism() -> None:
    a = load_dataset("synthetic", seed=3)
    b = load_dataset("synthetic", seed=3)
    c = load_dataset("synthetic", seed=4)
    assert DATASETS == ("fashion-mnist", "mnist", "synthetic", "cifar10")
    assert (len(a.train), len(a.test), a.num_classes, a.image_shape) == (2000, 500, 10, (28, 28))
    assert a.train.images.dtype == torch.uint8 and a.train.labels.dtype == torch.int64
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)
    for split in (a.train, a.test):
        assert torch.bincount(split.labels, minlength=10).min() > 0
        assert split.labels.max() < 10


def test_synthetic_is_learnable() -> None:
    # Nearest class mean must separate the classes, or training tests mean nothing.
    data = load_dataset("synthetic", limit_train=1000)
    train_x = data.train.images.flatten(1).float()
    means = torch.stack([train_x[data.train.labels == k].mean(0) for k in range(10)])
    predicted = torch.cdist(data.test.images.flatten(1).float(), means).argmin(1)
    assert (predicted == data.test.labels).float().mean() > 0.9


def test_split_validates() -> None:
    with pytest.raises(DataError, match="3 images but 2 labels"):
        Split(
            images=torch.zeros(3, 2, 2, dtype=torch.uint8), labels=torch.zeros(2, dtype=torch.int64)
        )
    with pytest.raises(DataError, match="uint8"):
        Split(images=torch.zeros(3, 2, 2), labels=torch.zeros(3, dtype=torch.int64))


def test_default_dir_constant() -> None:
    expected = Path("/usr/share/datasets/fashion-mnist")
    assert datasets_module.DEFAULT_DIRS["fashion-mnist"] == expected


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST not installed"
)
def test_real_fashion_mnist() -> None:
    data = load_dataset("fashion-mnist")
    assert (len(data.train), len(data.test)) == (60000, 10000)
    assert data.image_shape == (28, 28)
    assert data.train.images.shape == (60000, 28, 28) and data.train.images.dtype == torch.uint8
    for split in (data.train, data.test):
        assert split.labels.min() == 0 and split.labels.max() == 9
        assert torch.bincount(split.labels, minlength=10).min() > 0
