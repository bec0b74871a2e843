"""detbench.data.remote_zip against a local server: members by range, resume, ZIP64, checks."""

from __future__ import annotations

import io
import os
import re
import struct
import zipfile
from pathlib import Path

import pytest
from http_server import LocalHTTPServer, http_server_fixture  # noqa: F401 (fixture)

from detbench.data import remote_zip
from detbench.data.download import RangesUnsupported
from detbench.data.remote_zip import RemoteZip, Retry
from detbench.errors import DetbenchError

NO_WAIT = Retry(retries=2, backoff_s=0)
# Incompressible and compressible members, stored and deflated, and one big enough to be cut.
MEMBERS = {
    "imgs/a.bin": os.urandom(3000),
    "imgs/b.txt": b"detbench " * 2000,
    "imgs/c.bin": os.urandom(200_000),
    "imgs/d.txt": b"",
}
_EOCD = struct.Struct("<4s4H2LH")


def _zip(members: dict[str, bytes], *, comment: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.mkdir("imgs")
        for index, (name, data) in enumerate(members.items()):
            zf.writestr(name, data, zipfile.ZIP_DEFLATED if index % 2 else zipfile.ZIP_STORED)
        zf.comment = comment
    return buffer.getvalue()


def _zip64(members: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A zip laid out as one over 4 GB is: ZIP64 sizes and offsets in the local headers and the
    directory, a ZIP64 end record, and the classic end record's fields all 0xFFFF.../unusable."""
    with monkeypatch.context() as patch:
        patch.setattr(zipfile, "ZIP64_LIMIT", -1)  # every size and offset "needs" ZIP64
        data = bytearray(_zip(members))
    end = data.rindex(b"PK\x05\x06")
    fields = list(_EOCD.unpack_from(data, end))
    fields[3:7] = [0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF]
    _EOCD.pack_into(data, end, *fields)
    assert b"PK\x06\x06" in data  # the ZIP64 end record that readers must follow
    return bytes(data)


def _open(server: LocalHTTPServer, archive: bytes, **served: object) -> RemoteZip:
    url = server.add("/archive.zip", archive, **served)  # type: ignore[arg-type]
    return RemoteZip.open(url, retry=NO_WAIT)


def _ranges(server: LocalHTTPServer) -> list[tuple[int, int]]:
    """(first, last) byte of every range request after the tail's."""
    spans = []
    for record in server.requests[1:]:
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", record.range or "")
        assert match, record
        spans.append((int(match.group(1)), int(match.group(2))))
    return spans


def test_only_the_chosen_members_are_fetched(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    archive = _zip(MEMBERS)
    remote = _open(http_server, archive)
    assert remote.size == len(archive)
    assert sorted(remote.members) == sorted(MEMBERS)  # the folder entry is not a member
    assert http_server.requests[0].range == f"bytes=-{remote_zip.TAIL_BYTES}"

    for name in ("imgs/b.txt", "imgs/d.txt"):
        dest = remote.extract(name, tmp_path / name.replace("/", "_"))
        assert dest.read_bytes() == MEMBERS[name]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs_b.txt", "imgs_d.txt"]

    # One request per member, each within that member's own bytes: nothing of a.bin or c.bin.
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        offsets = {info.filename: info.header_offset for info in zf.infolist()}
    assert _ranges(http_server) == [
        (offsets["imgs/b.txt"], offsets["imgs/c.bin"] - 1),
        (offsets["imgs/d.txt"], zf.start_dir - 1),
    ]
    fetched = sum(last - first + 1 for first, last in _ranges(http_server))
    assert fetched < len(MEMBERS["imgs/b.txt"]) + 200  # deflated, plus headers


def test_member_resumes_after_a_cut_connection(
    http_server: LocalHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _zip(MEMBERS)
    monkeypatch.setattr(remote_zip, "TAIL_BYTES", 1000)  # the tail must not reach the cut
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        start = zf.getinfo("imgs/c.bin").header_offset
    cut = start + 70_000
    remote = _open(http_server, archive, cut_at=cut)
    dest = remote.extract("imgs/c.bin", tmp_path / "c.bin")
    assert dest.read_bytes() == MEMBERS["imgs/c.bin"]
    *_directory, (first_start, first_end), (second_start, second_end) = _ranges(http_server)
    assert first_start == start
    assert (second_start, second_end) == (cut, first_end)  # only the bytes that did not come
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin"]  # no .zipped or .part left


def test_part_left_by_a_killed_run_is_resumed(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    archive = _zip(MEMBERS)
    remote = _open(http_server, archive)
    member = remote.member("imgs/c.bin")
    (tmp_path / "c.bin.zipped.part").write_bytes(archive[member.start : member.start + 1234])
    remote.extract("imgs/c.bin", tmp_path / "c.bin")
    assert (tmp_path / "c.bin").read_bytes() == MEMBERS["imgs/c.bin"]
    assert _ranges(http_server) == [(member.start + 1234, member.end - 1)]


def test_existing_member_makes_no_request(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    remote = _open(http_server, _zip(MEMBERS))
    (tmp_path / "a.bin").write_bytes(MEMBERS["imgs/a.bin"])
    remote.extract("imgs/a.bin", tmp_path / "a.bin")
    assert len(http_server.requests) == 1  # the tail only


def test_zip64_archive(
    http_server: LocalHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = _open(http_server, _zip64(MEMBERS, monkeypatch))
    assert sorted(remote.members) == sorted(MEMBERS)
    for name, data in MEMBERS.items():
        assert remote.extract(name, tmp_path / Path(name).name).read_bytes() == data


def test_directory_longer_than_the_tail(
    http_server: LocalHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = {f"imgs/{i:04d}.txt": f"member {i}".encode() for i in range(300)}
    archive = _zip(many)
    monkeypatch.setattr(remote_zip, "TAIL_BYTES", 2000)
    remote = _open(http_server, archive)
    assert len(remote.members) == 300
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        directory_start = zf.start_dir
    # The tail, then the directory's first part (what the tail lacked), nothing else.
    assert _ranges(http_server) == [(directory_start, len(archive) - 2000 - 1)]
    assert remote.extract("imgs/0123.txt", tmp_path / "x").read_bytes() == b"member 123"


def test_longest_comment_is_found_in_the_tail(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    # An archive comment (up to 64 KiB) sits after the end record, which is then searched for
    # in the last 64 KiB: the first request must cover that, in an archive larger than it.
    big = {"imgs/big.bin": os.urandom(remote_zip.TAIL_BYTES + 10_000), "imgs/x.txt": b"x"}
    remote = _open(http_server, _zip(big, comment=b"c" * 0xFFFF))
    assert sorted(remote.members) == sorted(big)
    assert len(http_server.requests) == 1
    assert remote.extract("imgs/x.txt", tmp_path / "x.txt").read_bytes() == b"x"


def test_crc_mismatch_deletes_the_bytes(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    archive = bytearray(_zip(MEMBERS))
    remote = _open(http_server, bytes(archive))
    member = remote.member("imgs/a.bin")  # stored: flipping a byte changes the content only
    archive[member.end - 10] ^= 0xFF
    http_server.add("/archive.zip", bytes(archive))
    with pytest.raises(DetbenchError, match=r"archive\.zip: imgs/a\.bin: CRC-32/size mismatch"):
        remote.extract("imgs/a.bin", tmp_path / "a.bin")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_deflate_data_is_one_clear_error(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    archive = bytearray(_zip(MEMBERS))
    remote = _open(http_server, bytes(archive))
    member = remote.member("imgs/b.txt")  # deflated
    archive[member.start + 60 : member.start + 80] = b"\xff" * 20
    http_server.add("/archive.zip", bytes(archive))
    with pytest.raises(DetbenchError, match=r"imgs/b\.txt: (corrupt deflate data|CRC-32)"):
        remote.extract("imgs/b.txt", tmp_path / "b.txt")
    assert list(tmp_path.iterdir()) == []


def test_unknown_member_names_url(http_server: LocalHTTPServer) -> None:
    remote = _open(http_server, _zip(MEMBERS))
    with pytest.raises(DetbenchError, match=r"/archive\.zip: imgs/z\.bin not found in the archive"):
        remote.member("imgs/z.bin")


def test_not_a_zip_names_url(http_server: LocalHTTPServer) -> None:
    with pytest.raises(DetbenchError, match=r"/archive\.zip: not a valid zip archive"):
        _open(http_server, os.urandom(5000))


def test_size_differs_from_the_expected_one(http_server: LocalHTTPServer) -> None:
    url = http_server.add("/archive.zip", _zip(MEMBERS))
    with pytest.raises(DetbenchError, match=r"archive\.zip: size mismatch: expected 12 bytes"):
        RemoteZip.open(url, retry=NO_WAIT, expected_size=12)


def test_server_without_ranges(http_server: LocalHTTPServer) -> None:
    with pytest.raises(RangesUnsupported):
        _open(http_server, _zip(MEMBERS), ignore_range=True)
    (record,) = http_server.requests
    assert record.status == 200  # and its body was not read: one request, no retry
