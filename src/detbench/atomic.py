"""Atomic file output: a killed job never leaves a half-written file that looks complete.

Everything is written to a temporary sibling first and renamed into place (``os.replace`` is
atomic on POSIX within one file system). The temporary file or folder is created with the
permissions the umask gives (0644 and 0755 under umask 022), not tempfile's private 0600/0700:
results on a cluster's shared group file system must be readable by colleagues.

Also here, as the check that goes with writing files: ``sha256_file``, the one file hash
(checkpoints, the final-evaluation key, downloads).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

# Bytes read at a time when hashing: large files (archives of several GB) never fill memory.
HASH_CHUNK_SIZE = 1 << 20
# Tries at a fresh random name before giving up (a clash needs another writer of the same file).
_NAME_ATTEMPTS = 100
_Created = TypeVar("_Created")


def _create_sibling(target: Path, create: Callable[[Path], _Created]) -> _Created:
    """``create(name)`` at a fresh hidden name beside ``target``; ``create`` must fail with
    FileExistsError when the name is taken (O_EXCL, mkdir), as tempfile's functions do."""
    for _ in range(_NAME_ATTEMPTS):
        name = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            return create(name)
        except FileExistsError:
            continue
    raise FileExistsError(f"{target.parent}: no free temporary name for {target.name}")


def _create_sibling_file(target: Path) -> tuple[int, str]:
    """A new, empty temporary file beside ``target``, open for writing. Mode 0o666 is filtered
    by the umask (and a default ACL), as for any file a program creates."""

    def create(name: Path) -> tuple[int, str]:
        return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(name)

    return _create_sibling(target, create)


def _create_sibling_directory(target: Path) -> Path:
    """A new, empty temporary folder beside ``target`` (mode 0o777 filtered by the umask)."""

    def create(name: Path) -> Path:
        name.mkdir(0o777)
        return name

    return _create_sibling(target, create)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it to ``path``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports 'w' and 'wb', not {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = _create_sibling_file(target)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` whole."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_sibling_directory(target)
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike[str], chunk_size: int = HASH_CHUNK_SIZE) -> str:
    """Hex sha256 of a file's bytes, read ``chunk_size`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
