"""Read and write IDX files (the MNIST / Fashion-MNIST container format), raw or gzipped.

Layout: two zero bytes, a type code byte, a byte giving the number of dimensions,
then one big-endian uint32 per dimension, then the values, big-endian, row-major.

Every failure surfaces as a :class:`~ffint8.errors.DataError` whose message starts
with the file's path; no ``OSError``, ``EOFError``, ``zlib.error`` or
``struct.error`` escapes.
"""

from __future__ import annotations

import gzip
import math
import struct
import sys
import warnings
import zlib
from pathlib import Path

import torch

from ffint8.errors import DataError
from ffint8.fileio import read_data_file

# IDX type code -> (torch dtype, bytes per value).
_TYPES: dict[int, tuple[torch.dtype, int]] = {
    0x08: (torch.uint8, 1),
    0x09: (torch.int8, 1),
    0x0B: (torch.int16, 2),
    0x0C: (torch.int32, 4),
    0x0D: (torch.float32, 4),
    0x0E: (torch.float64, 8),
}
_CODE_FOR_DTYPE: dict[torch.dtype, int] = {dtype: code for code, (dtype, _) in _TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_HEADER_BYTES = 4
# IDX is big-endian; on the (usual) little-endian host multi-byte values need a swap.
_HOST_IS_LITTLE = sys.byteorder == "little"


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file into a tensor.

    The file is gunzipped when its name ends in ``.gz`` or it starts with the gzip
    magic bytes ``1f 8b``.

    Returns:
        A CPU tensor with the shape from the header and the dtype of the type code:
        uint8 (0x08), int8 (0x09), int16 (0x0B), int32 (0x0C), float32 (0x0D),
        float64 (0x0E). It owns its memory.

    Raises:
        DataError: the file is missing or unreadable, not IDX, has an unknown type
            code, is truncated, has trailing bytes, or is a corrupt gzip stream.
    """
    path = Path(path)
    data = _maybe_gunzip(path, read_data_file(path, "an IDX file"))
    dtype, itemsize, shape = _parse_header(path, data)
    offset = _HEADER_BYTES + 4 * len(shape)
    count = math.prod(shape)
    _check_payload_size(path, count, itemsize, len(data) - offset)
    return _decode(data, offset, dtype, itemsize, shape)


def write_idx(path: str | Path, tensor: torch.Tensor) -> None:
    """Write ``tensor`` as an IDX file, gzipped when ``path`` ends in ``.gz``.

    Args:
        path: destination file; overwritten if it exists.
        tensor: any shape with at most 255 dimensions, each < 2**32; dtype uint8,
            int8, int16, int32, float32 or float64. Moved to CPU before writing.

    Raises:
        DataError: unsupported dtype or shape, or the file cannot be written.
    """
    path = Path(path)
    tensor = tensor.detach().cpu().contiguous()
    code = _CODE_FOR_DTYPE.get(tensor.dtype)
    if code is None:
        supported = ", ".join(str(d).removeprefix("torch.") for d in _CODE_FOR_DTYPE)
        raise DataError(f"{path}: cannot write dtype {tensor.dtype} as IDX; supported: {supported}")
    if tensor.dim() > 255 or any(size >= 2**32 for size in tensor.shape):
        raise DataError(f"{path}: shape {tuple(tensor.shape)} does not fit an IDX header")
    header = struct.pack(">HBB", 0, code, tensor.dim()) + struct.pack(
        f">{tensor.dim()}I", *tensor.shape
    )
    data = header + _to_big_endian_bytes(tensor)
    if path.name.endswith(".gz"):
        # mtime=0 keeps the output byte-identical across runs.
        data = gzip.compress(data, mtime=0)
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise DataError(f"{path}: cannot write file: {exc.strerror or exc}") from exc


def _maybe_gunzip(path: Path, raw: bytes) -> bytes:
    """Decompress ``raw`` if the name or the magic bytes say it is gzip."""
    if not (path.name.endswith(".gz") or raw[:2] == _GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        # BadGzipFile is an OSError; a cut-off stream raises EOFError.
        raise DataError(f"{path}: corrupt gzip stream: {exc}") from exc


def _parse_header(path: Path, data: bytes) -> tuple[torch.dtype, int, tuple[int, ...]]:
    """Validate the IDX header; return (dtype, bytes per value, shape)."""
    if len(data) >= 2 and data[:2] != b"\x00\x00":
        raise DataError(
            f"{path}: not an IDX file (magic number 0x{data[:4].hex()}, "
            "expected 0x0000 followed by a type code)"
        )
    if len(data) < _HEADER_BYTES:
        raise DataError(
            f"{path}: not an IDX file (only {len(data)} bytes; an IDX header needs {_HEADER_BYTES})"
        )
    code, ndim = data[2], data[3]
    if code not in _TYPES:
        known = ", ".join(f"0x{c:02x}" for c in _TYPES)
        raise DataError(f"{path}: unknown IDX type code 0x{code:02x} (expected one of {known})")
    available = len(data) - _HEADER_BYTES
    if available < 4 * ndim:
        raise DataError(
            f"{path}: truncated: header says {ndim} dimensions ({4 * ndim} bytes) "
            f"but only {available} bytes follow"
        )
    shape = struct.unpack_from(f">{ndim}I", data, _HEADER_BYTES)
    dtype, itemsize = _TYPES[code]
    return dtype, itemsize, tuple(shape)


def _check_payload_size(path: Path, count: int, itemsize: int, available: int) -> None:
    """Require exactly ``count * itemsize`` bytes after the header."""
    expected = count * itemsize
    if available < expected:
        raise DataError(
            f"{path}: truncated: header says {count} values ({expected} bytes) "
            f"but only {available} bytes follow"
        )
    if available > expected:
        raise DataError(
            f"{path}: {available - expected} unexpected trailing bytes after the "
            f"{count} values ({expected} bytes) the header declares"
        )


def _decode(
    data: bytes, offset: int, dtype: torch.dtype, itemsize: int, shape: tuple[int, ...]
) -> torch.Tensor:
    """Turn the big-endian payload ``data[offset:]`` into a tensor of ``shape``."""
    nbytes = len(data) - offset
    if nbytes == 0:
        # torch.frombuffer refuses empty buffers.
        return torch.empty(shape, dtype=dtype)
    with warnings.catch_warnings():
        # `bytes` is read-only; we copy below, so torch's warning does not apply.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        flat = torch.frombuffer(data, dtype=torch.uint8, count=nbytes, offset=offset)
    if itemsize > 1 and _HOST_IS_LITTLE:
        flat = flat.view(-1, itemsize).flip(-1).reshape(-1)  # flip copies
    else:
        flat = flat.clone()  # detach from the immutable `bytes` buffer
    return flat.view(dtype).reshape(shape)


def _to_big_endian_bytes(tensor: torch.Tensor) -> bytes:
    """Serialise a contiguous CPU tensor's values as big-endian bytes (no numpy)."""
    flat = tensor.reshape(-1).view(torch.uint8)
    itemsize = tensor.element_size()
    if itemsize > 1 and _HOST_IS_LITTLE:
        flat = flat.view(-1, itemsize).flip(-1).reshape(-1)
    buffer = bytearray(flat.numel())
    if buffer:
        torch.frombuffer(buffer, dtype=torch.uint8).copy_(flat)
    return bytes(buffer)
