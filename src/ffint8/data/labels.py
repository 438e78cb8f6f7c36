"""Label handling for Forward-Forward: one-hot label embedding and negative labels.

Forward-Forward shows each layer an image with a label written into its first
``num_classes`` pixels: the true label makes positive data, a wrong one negative data.
"""

from __future__ import annotations

import torch


def embed_label(
    x: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    value: float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Overwrite the first ``num_classes`` features of each row with a one-hot label.

    Args:
        x: float (B, D) flattened images, D >= num_classes. Not modified
            (unless it is passed as ``out`` too).
        labels: integer (B,), values in [0, num_classes), on ``x``'s device.
        num_classes: width of the one-hot code.
        value: the "hot" entry; the other ``num_classes - 1`` entries become 0.
        out: optional preallocated (B, D) tensor to write into, avoiding an allocation.

    Returns:
        (B, D) tensor, ``out`` if given: equal to ``x`` except
        ``result[i, :num_classes] = value * one_hot(labels[i])``.
    """
    _check_embed_args(x, labels, num_classes, out)
    result = x.clone() if out is None else out.copy_(x)
    code = result[:, :num_classes]  # a view: writing it writes result
    code.zero_()
    code.scatter_(1, labels.view(-1, 1).to(torch.int64), value)
    return result


def sample_negative_labels(
    labels: torch.Tensor,
    num_classes: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw, for each sample, a wrong label uniformly from the other ``num_classes - 1``.

    Adding an offset uniform in [1, num_classes) modulo num_classes hits each wrong
    label with probability 1/(num_classes - 1) and never the true one.

    Args:
        labels: integer (B,) true labels in [0, num_classes).
        num_classes: number of classes, >= 2.
        generator: optional RNG for reproducibility; may live on the CPU even when
            ``labels`` is on an accelerator.

    Returns:
        int64 (B,) on ``labels``'s device.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 to have a wrong label, got {num_classes}")
    device = generator.device if generator is not None else labels.device
    offsets = torch.randint(1, num_classes, labels.shape, generator=generator, device=device)
    return (labels.to(torch.int64) + offsets.to(labels.device)) % num_classes


def embed_neutral(x: torch.Tensor, num_classes: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Write the neutral label (1 / num_classes in each of the first num_classes features) into
    every row of float (B, D) x: the input a softmax readout sees, at training and at test."""
    if x.dim() != 2 or not 1 <= num_classes <= x.shape[1]:
        raise ValueError(f"x must be (B, D) with D >= num_classes, got shape {tuple(x.shape)}")
    result = x.clone() if out is None else out.copy_(x)
    result[:, :num_classes] = 1.0 / num_classes
    return result


def hard_negative_labels(
    scores: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw, for each sample, a wrong label with probability softmax(scores) over the wrong
    labels only: the classes the model currently confuses with the true one come up most.

    Args:
        scores: float (B, C) logits (or any class scores) of the model's current prediction.
        labels: integer (B,) true labels.
        generator: optional RNG for reproducibility.

    Returns:
        int64 (B,), never equal to ``labels``.
    """
    if scores.dim() != 2 or scores.shape[0] != labels.shape[0] or scores.shape[1] < 2:
        raise ValueError(f"scores must be (B, C >= 2) for {labels.shape[0]} labels, "
                         f"got shape {tuple(scores.shape)}")
    logits = scores.detach().double().clone()
    logits.scatter_(1, labels.view(-1, 1).to(torch.int64), float("-inf"))
    probs = torch.softmax(logits, dim=1)
    probs = torch.nan_to_num(probs, nan=0.0)  # a row of -inf/NaN scores: fall back to uniform
    bad = probs.sum(1) <= 0
    if bool(bad.any()):
        probs[bad] = 1.0
        probs[bad] = probs[bad].scatter(1, labels[bad].view(-1, 1).to(torch.int64), 0.0)
    return torch.multinomial(probs, 1, generator=generator).view(-1)


def to_float_images(images_uint8: torch.Tensor) -> torch.Tensor:
    """Flatten uint8 images and scale them to [0, 1].

    Args:
        images_uint8: uint8 (N, H, W) (any (N, ...) works).

    Returns:
        float32 (N, H*W) in [0, 1], on the input's device; a new tensor.
    """
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
    if images_uint8.dim() < 2:
        raise ValueError(f"expected images (N, H, W), got shape {tuple(images_uint8.shape)}")
    return images_uint8.flatten(1).to(torch.float32).div_(255.0)


def _check_embed_args(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int, out: torch.Tensor | None
) -> None:
    """Validate shapes for :func:`embed_label` (values are not checked: no device sync)."""
    if x.dim() != 2:
        raise ValueError(f"x must be (B, D), got shape {tuple(x.shape)}")
    if not 1 <= num_classes <= x.shape[1]:
        raise ValueError(f"num_classes must be in [1, {x.shape[1]}], got {num_classes}")
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must be ({x.shape[0]},), got shape {tuple(labels.shape)}")
    if out is not None and out.shape != x.shape:
        raise ValueError(f"out must have x's shape {tuple(x.shape)}, got {tuple(out.shape)}")
