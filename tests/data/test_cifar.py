"""CIFAR-10 python batches: layout, directory forms, the dataset registry and every bad file."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ffint8.data import load_dataset
from ffint8.data.cifar import TEST_FILE, TRAIN_FILES, read_cifar10, read_cifar_batch
from ffint8.errors import ConfigError, DataError


def _batch(n: int, seed: int, labels: object = None) -> dict:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return {b"batch_label": b"fake", b"data": data,
            b"labels": list(rng.integers(0, 10, size=n).tolist()) if labels is None else labels,
            b"filenames": [b"img%d.png" % i for i in range(n)]}


def _write(path: Path, obj: object, protocol: int = 2) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _write_all(directory: Path, n: int = 4) -> dict[str, dict]:
    directory.mkdir(parents=True, exist_ok=True)
    batches = {name: _batch(n, seed) for seed, name in enumerate((*TRAIN_FILES, TEST_FILE))}
    for name, batch in batches.items():
        _write(directory / name, batch)
    return batches


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_batch_layout(tmp_path: Path, protocol: int) -> None:
    batch = _batch(3, 0)
    images, labels = read_cifar_batch(_write(tmp_path / "b", batch, protocol))
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.tolist() == batch[b"labels"]
    data = batch[b"data"]
    # row = 1024 red, then 1024 green, then 1024 blue values, each plane row-major
    assert images[1, 0, 0, 5] == data[1, 5]
    assert images[1, 1, 2, 3] == data[1, 1024 + 2 * 32 + 3]
    assert images[2, 2, 31, 31] == data[2, 3071]


def test_str_keys_and_numpy_labels(tmp_path: Path) -> None:
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    path = _write(tmp_path / "b", {"data": data, "labels": np.array([9, 0], dtype=np.int32)})
    images, labels = read_cifar_batch(path)
    assert labels.tolist() == [9, 0]
    assert torch.equal(images.flatten(1), torch.from_numpy(data))


@pytest.mark.parametrize("nested", [False, True])
def test_read_directory(tmp_path: Path, nested: bool) -> None:
    root = tmp_path / "cifar"
    batches = _write_all(root / "cifar-10-batches-py" if nested else root)
    (x_train, y_train), (x_test, y_test) = read_cifar10(root)
    assert x_train.shape == (20, 3, 32, 32) and x_test.shape == (4, 3, 32, 32)
    expected = [v for name in TRAIN_FILES for v in batches[name][b"labels"]]
    assert y_train.tolist() == expected
    assert torch.equal(x_test.flatten(1), torch.from_numpy(batches[TEST_FILE][b"data"]))


def test_load_dataset_cifar10(tmp_path: Path) -> None:
    _write_all(tmp_path)
    data = load_dataset("cifar10", tmp_path, limit_train=7)
    assert (len(data.train), len(data.test), data.num_classes) == (7, 4, 10)
    assert data.image_shape == (3, 32, 32)
    with pytest.raises(ConfigError, match="--data-dir is required for cifar10"):
        load_dataset("cifar10")


def test_missing_files(tmp_path: Path) -> None:
    _write_all(tmp_path)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(DataError, match=r"no data_batch_3; expected the CIFAR-10 python batches"):
        read_cifar10(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_cifar10(tmp_path / "nowhere")
    with pytest.raises(DataError, match="file not found"):
        read_cifar_batch(tmp_path / "data_batch_3")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "not a valid pickle"),
        (b"\x89PNG\r\n\x1a\n garbage", "not a valid pickle"),
        (pickle.dumps(_batch(2, 0))[:-40], "not a valid pickle"),
        (pickle.dumps(Evil()), r"refusing to load \w+\.system"),
        (pickle.dumps({b"data": torch.Size([1])}), "refusing to load torch.Size"),
        (pickle.dumps([1, 2]), "expected a pickled dict"),
        (pickle.dumps({b"labels": [1]}), "no 'data' entry"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)}), "no 'labels' entry"),
        (pickle.dumps({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]}),
         r"uint8 array of shape \(N, 3072\), got uint8 with shape \(2, 3071\)"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}),
         "got float32"),
        (pickle.dumps({b"data": b"\x00" * 3072, b"labels": [0]}), "got bytes"),
        (pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}), "no images"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
         "2 images but 1 labels"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}),
         "label 10 at index 1 is out of range 0..9"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 0]}),
         "label -1 at index 0 is out of range"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1.0]}),
         "label 1.0 at index 0 is not an integer"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": 3}),
         "must be a list of N integers"),
    ],
)
def test_bad_batch(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(DataError, match=fragment) as info:
        read_cifar_batch(path)
    assert str(info.value).startswith(str(path))


def test_directory_as_batch(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        read_cifar_batch(tmp_path)
