"""src/detbench/atomic.py: outputs appear whole, with the permissions the umask gives; the
file hash."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from detbench import atomic


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"),
    [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)],
)
def test_outputs_get_the_permissions_of_the_umask(
    tmp_path: Path, mask: int, file_mode: int, dir_mode: int
) -> None:
    # tempfile.mkstemp/mkdtemp would give 0600/0700 whatever the umask: colleagues on a
    # cluster's shared group file system could not read the results.
    with umask(mask):
        atomic.write_text(tmp_path / "a.txt", "a\n")
        atomic.write_bytes(tmp_path / "b.bin", b"b")
        atomic.write_json(tmp_path / "c.json", {"c": 1})
        with atomic.atomic_directory(tmp_path / "d") as folder:
            (folder / "inside.txt").write_text("d\n")
    for name in ("a.txt", "b.bin", "c.json"):
        assert mode(tmp_path / name) == file_mode, name
    assert mode(tmp_path / "d") == dir_mode
    assert (tmp_path / "d" / "inside.txt").read_text() == "d\n"


def test_replaces_the_target_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old\n")
    atomic.write_json(target, [1, 2])
    assert target.read_text() == "[\n  1,\n  2\n]\n"
    assert [path.name for path in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic.atomic_open(target) as handle:
        handle.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [path.name for path in tmp_path.iterdir()] == ["out.txt"]


def test_a_taken_temporary_name_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two writers of one target draw different names; a clash (O_EXCL) draws again.
    names = iter(["aaaaaaaaaaaa", "aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda _n: next(names))
    (tmp_path / ".out.txt.aaaaaaaaaaaa.tmp").write_text("another writer\n")
    atomic.write_text(tmp_path / "out.txt", "mine\n")
    assert (tmp_path / "out.txt").read_text() == "mine\n"
    assert (tmp_path / ".out.txt.aaaaaaaaaaaa.tmp").read_text() == "another writer\n"


def test_sha256_file_reads_in_chunks_and_hashes_every_byte(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    path = tmp_path / "x.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert atomic.sha256_file(path) == expected
    assert atomic.sha256_file(path, chunk_size=7) == expected
