"""IDX reader/writer: round trips, byte order and every malformed-file error."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from ffint8.data import read_idx, write_idx
from ffint8.errors import DataError


def _header(code: int, shape: tuple[int, ...]) -> bytes:
    return struct.pack(">HBB", 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def _sample(dtype: torch.dtype) -> torch.Tensor:
    values = torch.arange(-30, 30, dtype=torch.float64).reshape(3, 4, 5) * 3.7
    if dtype == torch.uint8:
        return (values.abs() * 2).to(torch.uint8)
    if dtype.is_floating_point:
        return values.to(dtype)
    return (values * 1000).to(dtype) if dtype == torch.int32 else values.to(dtype)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.float32, torch.float64]
)
def test_round_trip(tmp_path: Path, dtype: torch.dtype, suffix: str) -> None:
    tensor = _sample(dtype)
    path = tmp_path / f"x-idx3{suffix}"
    write_idx(path, tensor)
    back = read_idx(path)
    assert back.dtype == dtype
    assert back.shape == tensor.shape
    assert torch.equal(back, tensor)


def test_gz_file_is_really_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    write_idx(path, torch.zeros(2, 2, dtype=torch.uint8))
    assert path.read_bytes()[:2] == b"\x1f\x8b"


def test_reads_known_big_endian_bytes(tmp_path: Path) -> None:
    # Hand-written bytes pin the byte order independently of write_idx.
    path = tmp_path / "ints"
    path.write_bytes(_header(0x0C, (2,)) + bytes([0, 0, 1, 2, 0xFF, 0xFF, 0xFF, 0xFE]))
    assert read_idx(path).tolist() == [258, -2]
    path.write_bytes(_header(0x0D, (1,)) + struct.pack(">f", 1.5))
    assert read_idx(path).tolist() == [1.5]
    path.write_bytes(_header(0x08, (2, 3)) + bytes(range(6)))
    result = read_idx(path)
    assert result.dtype == torch.uint8 and result.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_gzip_detected_by_magic_without_gz_name(tmp_path: Path) -> None:
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(gzip.compress(_header(0x08, (3,)) + bytes([7, 8, 9])))
    assert read_idx(path).tolist() == [7, 8, 9]


def test_empty_dimension(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    write_idx(path, torch.zeros(0, 28, 28, dtype=torch.uint8))
    assert read_idx(path).shape == (0, 28, 28)


def _expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope-idx3-ubyte", "file not found")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    _expect_error(tmp_path, "is a directory")


def test_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    _expect_error(path, "not an IDX file", "0x12340801", "expected 0x0000")


def test_too_short_for_header(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00")
    _expect_error(path, "not an IDX file")


def test_unknown_type_code(tmp_path: Path) -> None:
    path = tmp_path / "code"
    path.write_bytes(_header(0x42, (1,)) + b"\x00")
    _expect_error(path, "unknown IDX type code 0x42")


def test_truncated_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "dims"
    path.write_bytes(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02")
    _expect_error(path, "truncated", "3 dimensions")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_payload(tmp_path: Path, suffix: str) -> None:
    data = _header(0x0C, (10, 2)) + b"\x00" * 30
    path = tmp_path / f"trunc{suffix}"
    path.write_bytes(gzip.compress(data) if suffix else data)
    _expect_error(path, "truncated: header says 20 values (80 bytes) but only 30 bytes follow")


def test_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "trail"
    path.write_bytes(_header(0x08, (2, 2)) + b"\x01" * 7)
    _expect_error(path, "3 unexpected trailing bytes", "4 values")


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"garbage that is not deflate" * 3)
    _expect_error(path, "corrupt gzip stream")


def test_cut_off_gzip(tmp_path: Path) -> None:
    path = tmp_path / "cut.gz"
    whole = gzip.compress(_header(0x08, (100,)) + bytes(range(100)))
    path.write_bytes(whole[: len(whole) // 2])
    _expect_error(path, "corrupt gzip stream")


def test_gz_name_but_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "plain.gz"
    path.write_bytes(_header(0x08, (1,)) + b"\x01")
    _expect_error(path, "corrupt gzip stream")


def test_write_rejects_unsupported_dtype(tmp_path: Path) -> None:
    path = tmp_path / "b"
    with pytest.raises(DataError, match="cannot write dtype"):
        write_idx(path, torch.zeros(2, dtype=torch.bool))
    assert not path.exists()


def test_write_to_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "no" / "dir" / "f"
    with pytest.raises(DataError, match="cannot write file"):
        write_idx(path, torch.zeros(2, dtype=torch.uint8))
