"""Datasets, IDX file I/O and Forward-Forward label helpers."""

from __future__ import annotations

from ffint8.data.datasets import (
    DATASETS,
    DEFAULT_DIRS,
    Dataset,
    Split,
    load_dataset,
    load_mnist_format,
    make_synthetic,
)
from ffint8.data.idx import read_idx, write_idx
from ffint8.data.labels import (
    embed_label,
    embed_neutral,
    hard_negative_labels,
    sample_negative_labels,
    to_float_images,
)

__all__ = [
    "DATASETS",
    "DEFAULT_DIRS",
    "Dataset",
    "Split",
    "embed_label",
    "embed_neutral",
    "hard_negative_labels",
    "load_dataset",
    "load_mnist_format",
    "make_synthetic",
    "read_idx",
    "sample_negative_labels",
    "to_float_images",
    "write_idx",
]
