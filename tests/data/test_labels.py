"""Label embedding, negative-label sampling and image conversion."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from ffint8.data import embed_label, sample_negative_labels, to_float_images

NUM_CLASSES = 10
DRAWS = 90_000
# Chi-square over the 90 off-diagonal (true, negative) cells has 80 degrees of freedom
# (each true label's 9000 draws fix one total). Mean 80, sd sqrt(160) ~ 12.6; the bound
# sits ~6 sd above the mean, so a fair sampler essentially never fails it.
CHI2_BOUND = 156.0


def test_embed_label_one_hot_and_input_untouched() -> None:
    x = torch.rand(5, 20)
    original = x.clone()
    labels = torch.tensor([0, 3, 9, 3, 7])
    result = embed_label(x, labels, NUM_CLASSES, value=0.5)
    assert torch.equal(x, original)
    assert result.data_ptr() != x.data_ptr()
    expected_code = torch.nn.functional.one_hot(labels, NUM_CLASSES).float() * 0.5
    assert torch.equal(result[:, :NUM_CLASSES], expected_code)
    assert torch.equal(result[:, NUM_CLASSES:], x[:, NUM_CLASSES:])


def test_embed_label_into_out() -> None:
    x = torch.rand(4, 12)
    out = torch.full((4, 12), 7.0)
    labels = torch.tensor([1, 0, 2, 1])
    result = embed_label(x, labels, 3, out=out)
    assert result is out
    assert torch.equal(result, embed_label(x, labels, 3))
    assert result[:, :3].sum(1).tolist() == [1.0] * 4


def test_embed_label_in_place_when_out_is_x() -> None:
    x = torch.rand(2, 5)
    embed_label(x, torch.tensor([1, 0]), 2, out=x)
    assert x[:, :2].tolist() == [[0.0, 1.0], [1.0, 0.0]]


@pytest.mark.parametrize(
    ("x", "labels", "num_classes"),
    [
        (torch.rand(4), torch.zeros(4, dtype=torch.int64), 2),
        (torch.rand(4, 5), torch.zeros(3, dtype=torch.int64), 2),
        (torch.rand(4, 5), torch.zeros(4, dtype=torch.int64), 6),
    ],
)
def test_embed_label_rejects_bad_shapes(
    x: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> None:
    with pytest.raises(ValueError):
        embed_label(x, labels, num_classes)


def _biased_sampler(
    labels: torch.Tensor, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """A classic mistake: redraw-free fix-up that doubles the odds of label + 1."""
    draw = torch.randint(0, num_classes, labels.shape, generator=generator)
    return torch.where(draw == labels, (labels + 1) % num_classes, draw)


def _chi_square(sampler: Callable[..., torch.Tensor]) -> float:
    labels = torch.arange(DRAWS) % NUM_CLASSES
    negatives = sampler(labels, NUM_CLASSES, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(labels * NUM_CLASSES + negatives, minlength=NUM_CLASSES**2)
    counts = counts.reshape(NUM_CLASSES, NUM_CLASSES).double()
    off_diagonal = ~torch.eye(NUM_CLASSES, dtype=torch.bool)
    expected = DRAWS / NUM_CLASSES / (NUM_CLASSES - 1)
    return float(((counts[off_diagonal] - expected) ** 2 / expected).sum())


def test_negatives_never_true_and_uniform() -> None:
    labels = torch.arange(DRAWS) % NUM_CLASSES
    negatives = sample_negative_labels(labels, NUM_CLASSES, torch.Generator().manual_seed(1))
    assert negatives.dtype == torch.int64 and negatives.shape == labels.shape
    assert not (negatives == labels).any()
    assert negatives.min() >= 0 and negatives.max() < NUM_CLASSES
    assert _chi_square(sample_negative_labels) < CHI2_BOUND


def test_chi_square_bound_catches_biased_sampler() -> None:
    assert _chi_square(_biased_sampler) > CHI2_BOUND


def test_negatives_reproducible_with_generator() -> None:
    labels = torch.randint(0, NUM_CLASSES, (100,), dtype=torch.uint8)
    a = sample_negative_labels(labels, NUM_CLASSES, torch.Generator().manual_seed(5))
    b = sample_negative_labels(labels, NUM_CLASSES, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.dtype == torch.int64


def test_negatives_need_two_classes() -> None:
    with pytest.raises(ValueError):
        sample_negative_labels(torch.zeros(3, dtype=torch.int64), 1)


def test_to_float_images() -> None:
    images = torch.tensor([[[0, 255], [128, 1]]], dtype=torch.uint8).repeat(3, 1, 1)
    result = to_float_images(images)
    assert result.dtype == torch.float32 and result.shape == (3, 4)
    assert result.min() == 0.0 and result.max() == 1.0
    assert torch.allclose(result[0], torch.tensor([0.0, 1.0, 128 / 255, 1 / 255]))


def test_to_float_images_rejects_non_uint8() -> None:
    with pytest.raises(TypeError):
        to_float_images(torch.zeros(2, 3, 3))
