"""Classifying image files: load_image (PNG, JPEG, resizing, invert, bad files) and predict_files."""

import pytest
import torch

from ffint8.data import load_dataset, to_float_images
from ffint8.errors import CheckpointError, ConfigError, DataError
from ffint8.infer import FASHION_MNIST_CLASSES, class_names, image_side, load_image, predict_files
from ffint8.train.loop import FFTrainer
from ffint8.train.run import load_checkpoint

Image = pytest.importorskip("PIL.Image")

ALGOS = ["ff-fp32", "ff-int8"]


@pytest.fixture(scope="module")
def images():
    """uint8 (8, 28, 28) synthetic test images and their labels."""
    d = load_dataset("synthetic", limit_train=1, limit_test=8)
    return d.test.images, d.test.labels


def write_pngs(directory, images_uint8):
    paths = []
    for i, img in enumerate(images_uint8):
        path = directory / f"img{i}.png"
        Image.fromarray(img.numpy()).save(path)
        paths.append(path)
    return paths


def test_png_28x28_loads_exactly(tmp_path, images):
    (path,) = write_pngs(tmp_path, images[0][:1])
    x = load_image(path, 784)
    assert x.dtype == torch.float32 and x.shape == (784,)
    assert torch.equal(x, to_float_images(images[0][:1])[0])


def test_larger_rgb_jpeg_is_resized(tmp_path):
    img = Image.new("RGB", (64, 48), (0, 0, 0))
    img.paste((255, 255, 255), (16, 12, 48, 36))  # a light box centred on a dark background
    path = tmp_path / "photo.jpg"
    img.save(path, quality=95)
    x = load_image(path, 784)
    assert x.dtype == torch.float32 and x.shape == (784,)
    assert 0.0 <= x.min() and x.max() <= 1.0
    grid = x.reshape(28, 28)
    assert grid[14, 14] > 0.9 and grid[0, 0] < 0.1 and grid[27, 27] < 0.1


def test_invert_flips_values(tmp_path, images):
    (path,) = write_pngs(tmp_path, images[0][:1])
    assert torch.allclose(load_image(path, 784, invert=True), 1.0 - load_image(path, 784))


def test_grayscale_jpeg_and_palette_png(tmp_path):
    gray = tmp_path / "g.jpeg"
    Image.new("L", (28, 28), 128).save(gray)
    pal = tmp_path / "p.png"
    Image.new("RGB", (30, 30), (255, 255, 255)).convert("P").save(pal)
    assert abs(load_image(gray, 784).mean().item() - 128 / 255) < 0.02
    assert torch.allclose(load_image(pal, 784), torch.ones(784))


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n trunc"])
def test_corrupt_file_is_a_data_error(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match="bad.png: not a readable PNG or JPEG image"):
        load_image(path, 784)


def test_truncated_png_is_a_data_error(tmp_path, images):
    (path,) = write_pngs(tmp_path, images[0][:1])
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match="img0.png: not a readable PNG or JPEG image"):
        load_image(path, 784)


def test_other_format_is_a_data_error(tmp_path):
    path = tmp_path / "pic.bmp"
    Image.new("L", (28, 28)).save(path)
    with pytest.raises(DataError, match=r"pic.bmp: not a readable PNG or JPEG image \(BMP"):
        load_image(path, 784)


def test_missing_file_or_directory_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nothere.png"):
        load_image(tmp_path / "nothere.png", 784)
    with pytest.raises(DataError, match="not a file"):
        load_image(tmp_path, 784)


def test_non_square_model_is_a_config_error(tmp_path):
    assert image_side(784) == 28
    with pytest.raises(ConfigError, match="785 inputs"):
        load_image(tmp_path / "x.png", 785)


@pytest.mark.parametrize("algo", ALGOS)
def test_predict_files_agrees_with_trainer(tmp_path, checkpoints, images, algo):
    paths = write_pngs(tmp_path, images[0])
    results = predict_files(checkpoints[algo], paths)
    model, cfg, blob = load_checkpoint(checkpoints[algo])
    expected = FFTrainer(model, cfg, blob["num_classes"]).predict_scores(to_float_images(images[0]))
    assert [r["path"] for r in results] == [str(p) for p in paths]
    scores = torch.tensor([r["scores"] for r in results])
    assert scores.shape == (len(paths), 10)
    assert torch.allclose(scores, expected, rtol=0, atol=1e-6)
    assert [r["label"] for r in results] == scores.argmax(1).tolist()
    assert all(isinstance(r["label"], int) and "name" not in r for r in results)
    hits = sum(r["label"] == int(y) for r, y in zip(results, images[1]))
    assert hits >= len(paths) // 2  # the tiny model learnt something


def test_predict_files_names_known_classes(tmp_path, checkpoints, images):
    blob = torch.load(checkpoints["ff-fp32"], weights_only=True)
    blob["config"]["dataset"] = "fashion-mnist"
    ckpt = tmp_path / "fashion.pt"
    torch.save(blob, ckpt)
    results = predict_files(ckpt, write_pngs(tmp_path, images[0][:3]))
    assert all(r["name"] == FASHION_MNIST_CLASSES[r["label"]] for r in results)
    assert class_names("mnist", 10)[3] == "3" and class_names("synthetic", 10) is None


def test_predict_files_bad_inputs(tmp_path, checkpoints):
    with pytest.raises(CheckpointError, match="missing.pt"):
        predict_files(tmp_path / "missing.pt", [])
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match="x.jpg"):
        predict_files(checkpoints["ff-int8"], [bad])
    assert predict_files(checkpoints["ff-int8"], []) == []
