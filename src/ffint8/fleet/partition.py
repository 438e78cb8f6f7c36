"""Splitting a training set among federated clients: IID, or by label (non-IID).

Pure functions of the labels and a seed, so every node computes the same split on its own.
"""

from __future__ import annotations

import torch

from ffint8.errors import ConfigError

PARTITIONS = ("iid", "label")
SHARDS_PER_CLIENT = 2  # label split: each client gets this many runs of label-sorted samples


def partition_indices(labels: torch.Tensor, n_parts: int, mode: str, seed: int) -> list[torch.Tensor]:
    """Sample indices (int64) of each of n_parts clients; disjoint, together all samples.

    iid:   a random permutation cut into n_parts pieces (sizes differ by at most one).
    label: the indices sorted by label, cut into SHARDS_PER_CLIENT * n_parts equal runs, dealt
           at random, SHARDS_PER_CLIENT per client: each client sees only a few classes (two to
           three of ten with 4 clients), the "pathological non-IID" split of McMahan et al. (2017).
    """
    if mode not in PARTITIONS:
        raise ConfigError(f"invalid --partition {mode!r}; choose one of: {', '.join(PARTITIONS)}")
    n = labels.shape[0]
    shards = n_parts * (SHARDS_PER_CLIENT if mode == "label" else 1)
    if n_parts < 1 or n < shards:
        raise ConfigError(f"--clients {n_parts}: {n} training samples cannot be split into "
                          f"{shards} {'shards' if mode == 'label' else 'parts'}")
    generator = torch.Generator().manual_seed(seed)
    if mode == "iid":
        return list(torch.randperm(n, generator=generator).tensor_split(n_parts))
    order = torch.sort(labels, stable=True).indices  # equal labels keep their order: stable
    runs = order.tensor_split(shards)
    deal = torch.randperm(shards, generator=generator).view(n_parts, SHARDS_PER_CLIENT)
    return [torch.cat([runs[int(s)] for s in row]) for row in deal]


def class_counts(labels: torch.Tensor, parts: list[torch.Tensor], num_classes: int) -> list[list[int]]:
    """Per client, how many samples of each class it holds: (n_parts, num_classes) as lists."""
    return [torch.bincount(labels[p], minlength=num_classes).tolist() for p in parts]
