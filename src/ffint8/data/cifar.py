"""Read the CIFAR-10 "python version" batches (data_batch_1..5, test_batch) safely.

Each batch is a pickled dict with b"data", a uint8 numpy array (N, 3072) whose rows hold the red,
green and blue 32x32 planes one after another, and b"labels", N integers in [0, 10). Unpickling
can run arbitrary code, so these files are read with an unpickler that resolves only the few
numpy names an array needs (and a latin-1 decoder that Python 2 pickles use); anything else in
the file is refused. Every failure is a :class:`~ffint8.errors.DataError` naming the file.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from ffint8.errors import DataError
from ffint8.fileio import read_data_file

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
SUBDIR = "cifar-10-batches-py"  # what cifar-10-python.tar.gz unpacks to


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """What Python 2 byte strings unpickle through (_codecs.encode(s, "latin1")); nothing else."""
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The callables numpy's own pickles name, under every module path numpy versions use."""
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy's _reconstruct, wherever this numpy keeps it
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # _frombuffer (pickle protocol 5)
    scalar = np.int64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Dicts, lists, numbers, strings, bytes and numpy arrays; no other class or function."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR batch holds only arrays, lists and "
                "bytes"
            ) from None


def _unpickle(path: Path) -> object:
    raw = read_data_file(path, "a CIFAR-10 batch file")
    try:
        return _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        if "refusing" in str(exc):
            raise DataError(f"{path}: {exc}") from None
        raise DataError(f"{path}: not a CIFAR-10 batch (not a valid pickle: {exc})") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle raises almost any exception type
        raise DataError(f"{path}: not a CIFAR-10 batch (not a valid pickle: "
                        f"{type(exc).__name__}: {exc})") from None


def _entry(path: Path, batch: dict, key: str) -> object:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    keys = ", ".join(repr(k) for k in list(batch)[:8])
    raise DataError(f"{path}: no {key!r} entry; a CIFAR-10 batch has b'data' and b'labels' "
                    f"(found: {keys or 'nothing'})")


def read_cifar_batch(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one CIFAR-10 python batch.

    Returns:
        images uint8 (N, 3, 32, 32) (channel planes red, green, blue) and labels int64 (N,).

    Raises:
        DataError: the file is missing or unreadable, not a pickle, names anything but numpy
            arrays, is not a dict with b"data" and b"labels", has data that is not uint8
            (N, 3072), a label count other than N, a non-integer label or one outside 0..9.
    """
    path = Path(path)
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict with b'data' and b'labels', got "
                        f"{type(batch).__name__}")
    data = _entry(path, batch, "data")
    pixels = int(np.prod(IMAGE_SHAPE))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != pixels:
        got = (f"{data.dtype} with shape {data.shape}" if isinstance(data, np.ndarray)
               else type(data).__name__)
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (N, {pixels}), got {got}")
    n = data.shape[0]
    if n == 0:
        raise DataError(f"{path}: contains no images")
    labels = _labels(path, _entry(path, batch, "labels"), n)
    images = torch.from_numpy(np.ascontiguousarray(data)).reshape(n, *IMAGE_SHAPE).clone()
    return images, labels


def _labels(path: Path, labels: object, n: int) -> torch.Tensor:
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: b'labels' must be N integers, got an array of "
                            f"{labels.dtype} with shape {labels.shape}")
        values = labels.astype(np.int64).tolist()
    elif isinstance(labels, (list, tuple)):
        values = labels
    else:
        raise DataError(f"{path}: b'labels' must be a list of N integers, got "
                        f"{type(labels).__name__}")
    if len(values) != n:
        raise DataError(f"{path}: {n} images but {len(values)} labels")
    for index, value in enumerate(values):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise DataError(f"{path}: label {value!r} at index {index} is not an integer")
        if not 0 <= value < NUM_CLASSES:
            raise DataError(f"{path}: label {int(value)} at index {index} is out of range "
                            f"0..{NUM_CLASSES - 1}")
    return torch.tensor([int(v) for v in values], dtype=torch.int64)


def find_cifar_dir(directory: str | Path) -> Path:
    """directory itself, or its cifar-10-batches-py subdirectory, whichever holds test_batch."""
    directory = Path(directory)
    if not directory.exists():
        raise DataError(f"data directory {directory} does not exist")
    if not directory.is_dir():
        raise DataError(f"data directory {directory} is not a directory")
    for candidate in (directory, directory / SUBDIR):
        if (candidate / TEST_FILE).exists():
            return candidate
    return directory


def read_cifar10(
    directory: str | Path,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Read the five training batches and the test batch from directory (or its
    cifar-10-batches-py subdirectory).

    Returns:
        ((train images, train labels), (test images, test labels)): uint8 (N, 3, 32, 32) and
        int64 (N,); 50,000 and 10,000 samples for the real data set.
    """
    root = find_cifar_dir(directory)
    names = (*TRAIN_FILES, TEST_FILE)
    missing = [name for name in names if not (root / name).exists()]
    if missing:
        raise DataError(
            f"{root}: no {', '.join(missing)}; expected the CIFAR-10 python batches "
            f"({', '.join(TRAIN_FILES[:1])}..{TRAIN_FILES[-1]}, {TEST_FILE}) there or in "
            f"{SUBDIR}/ (unpack cifar-10-python.tar.gz)"
        )
    train = [read_cifar_batch(root / name) for name in TRAIN_FILES]
    test = read_cifar_batch(root / TEST_FILE)
    images = torch.cat([b[0] for b in train])
    labels = torch.cat([b[1] for b in train])
    return (images, labels), test
