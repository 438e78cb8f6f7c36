"""File helpers: atomic writes (a crash or power cut leaves the old file or the new one, never
half) and whole-file reads whose errors name the file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ffint8.errors import DataError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; once the body has written it, flush it to disk and
    rename it over `path`. If the body raises, the temporary file is removed and `path` is left
    as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_data_file(path: Path, expected: str) -> bytes:
    """The whole file, OS errors turned into DataErrors that name it; `expected` names what
    should be there ("an IDX file") for the message when path is a directory."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{path}: is a directory, expected {expected}") from exc
    except PermissionError as exc:
        raise DataError(f"{path}: permission denied") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
